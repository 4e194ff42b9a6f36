"""Preference pairs: reading and validating the JSONL formats users bring, every line accounted for.

Two formats, one object a line:

- MiniMind ``dpo.jsonl``: ``{"chosen": [messages], "rejected": [messages]}``; each side is a whole conversation
  ({"role", "content"} dicts, roles system/user/assistant) ending in an assistant reply.
- flat: ``{"prompt": "...", "chosen": "...", "rejected": "..."}``; ``prompt`` may also be a list of messages.

A valid pair ends in assistant replies that differ and shares everything before them (the prompt, which holds
at least one user turn and ends with one). Every other line goes to ``rejects.jsonl`` as notebook 01 writes
rejects: ``{"file", "line", "reason", "excerpt", "source", "detail"}``. Texts go through
``minigpt.data.normalize.normalize``, as SFT data and prompts do.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..data import normalize as textnorm
from ..data.jsonl import INVALID_JSON, INVALID_UTF8, iter_json_lines  # noqa: F401 (reject reasons)

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
EXCERPT_CHARS = 200
MAX_LISTED = 5

# reject reasons
NOT_AN_OBJECT = "not_an_object"
UNKNOWN_FORMAT = "unknown_format"
BAD_MESSAGES = "bad_messages"
BAD_ROLE = "bad_role"
NO_FINAL_REPLY = "no_final_assistant_reply"
EMPTY_REPLY = "empty_reply"
NO_USER_TURN = "no_user_turn"
PROMPT_MISMATCH = "prompt_mismatch"
IDENTICAL_REPLIES = "identical_replies"


class PairError(ValueError):
    """Why a line is not a usable preference pair: ``reason`` (a name above) and a human ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class PreferencePair:
    """A shared prompt (messages ending in a user turn) and two different assistant replies."""

    prompt: tuple[tuple[str, str], ...]  # ((role, content), ...), hashable
    chosen: str
    rejected: str

    def prompt_messages(self) -> list[dict]:
        return [{"role": r, "content": c} for r, c in self.prompt]

    def messages(self, side: str) -> list[dict]:
        """The whole conversation of one side: the prompt, then the chosen or rejected reply."""
        reply = {"chosen": self.chosen, "rejected": self.rejected}[side]
        return self.prompt_messages() + [{"role": "assistant", "content": reply}]

    def as_json(self) -> dict:
        """The MiniMind dpo.jsonl form of this pair."""
        return {"chosen": self.messages("chosen"), "rejected": self.messages("rejected")}


@dataclass
class PairReport:
    """What happened to every line of a pair file."""

    source: str
    lines: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejects: list[dict] = field(default_factory=list)  # every reject, as rejects.jsonl holds it

    def reject(self, file: str, line: int, reason: str, detail: str, raw: str = "") -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.rejects.append({"file": file, "line": line, "reason": reason, "excerpt": raw[:EXCERPT_CHARS],
                             "source": "preference pairs", "detail": detail})

    def message(self) -> str:
        text = f"{self.source}: {self.lines} lines, {self.kept} pairs used"
        if self.rejected:
            text += f", {sum(self.rejected.values())} rejected {self.rejected}; first: " + "; ".join(
                f"line {r['line']}: {r['reason']} ({r['detail']})" for r in self.rejects[:MAX_LISTED])
        return text

    def as_dict(self) -> dict:
        return {"source": self.source, "lines": self.lines, "kept": self.kept, "rejected": dict(self.rejected)}


def _messages(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise PairError(BAD_MESSAGES, f"{where}: expected a non-empty list of {{\"role\", \"content\"}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or not isinstance(m.get("role"), str):
            raise PairError(BAD_MESSAGES, f"{where}[{i}]: expected {{\"role\": str, \"content\": str}}, got {str(m)[:80]}")
        if m["role"] not in ROLES:
            raise PairError(BAD_ROLE, f"{where}[{i}].role: {m['role']!r}, expected one of {', '.join(ROLES)}")
        out.append((m["role"], m["content"]))
    return out


def _split_reply(msgs: list[tuple[str, str]], where: str) -> tuple[list[tuple[str, str]], str]:
    if msgs[-1][0] != "assistant":
        raise PairError(NO_FINAL_REPLY, f"{where}: the last message is a {msgs[-1][0]!r} turn, expected the assistant's reply")
    return msgs[:-1], msgs[-1][1]


@dataclass
class PairSet:
    """The pairs notebook 07 trains and evaluates on, and how they were made."""

    train: list[PreferencePair]
    eval: list[PreferencePair]
    info: dict[str, Any]


def parse_pair(obj: Any) -> PreferencePair:
    """A validated, normalised pair from one decoded JSON line; PairError (reason, detail) otherwise."""
    if not isinstance(obj, dict):
        raise PairError(NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    if "chosen" not in obj or "rejected" not in obj:
        missing = [k for k in ("chosen", "rejected") if k not in obj]
        raise PairError(UNKNOWN_FORMAT, f"missing key {', '.join(missing)}: expected {{\"chosen\", \"rejected\"}} "
                                        "(lists of messages) or {\"prompt\", \"chosen\", \"rejected\"} (strings)")
    if "prompt" in obj:
        prompt = ([("user", obj["prompt"])] if isinstance(obj["prompt"], str) else _messages(obj["prompt"], "prompt"))
        replies = []
        for side in ("chosen", "rejected"):
            if not isinstance(obj[side], str):
                raise PairError(BAD_MESSAGES, f"{side}: expected a string (the flat format), got {type(obj[side]).__name__}")
            replies.append(obj[side])
        chosen, rejected = replies
    else:
        c_prompt, chosen = _split_reply(_messages(obj["chosen"], "chosen"), "chosen")
        r_prompt, rejected = _split_reply(_messages(obj["rejected"], "rejected"), "rejected")
        if c_prompt != r_prompt:
            at = next((i for i, (a, b) in enumerate(zip(c_prompt, r_prompt)) if a != b), min(len(c_prompt), len(r_prompt)))
            raise PairError(PROMPT_MISMATCH, f"chosen and rejected differ at message {at} before their final replies "
                                             f"({len(c_prompt)} vs {len(r_prompt)} messages); a pair must share its prompt")
        prompt = c_prompt
    return checked_pair(prompt, chosen, rejected)


def checked_pair(prompt: list[tuple[str, str]], chosen: str, rejected: str) -> PreferencePair:
    texts = textnorm.normalize([c for _, c in prompt] + [chosen, rejected])
    prompt = [(r, c) for (r, _), c in zip(prompt, texts)]
    chosen, rejected = texts[-2].strip(), texts[-1].strip()
    if not any(r == "user" and c.strip() for r, c in prompt) or prompt[-1][0] != "user":
        raise PairError(NO_USER_TURN, "the prompt must hold a non-empty user turn and end with one")
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        if not text:
            raise PairError(EMPTY_REPLY, f"the {side} reply is empty")
    if chosen == rejected:
        raise PairError(IDENTICAL_REPLIES, "chosen and rejected replies are the same text; nothing to prefer")
    return PreferencePair(tuple(prompt), chosen, rejected)


def read_pairs(path: str | Path, report: PairReport | None = None) -> list[PreferencePair]:
    """The valid pairs of a JSONL file; every other line is in ``report`` (line, reason, detail)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: preference pairs file not found (expected JSONL of "
                                "{\"chosen\": [messages], \"rejected\": [messages]} or {\"prompt\", \"chosen\", \"rejected\"})")
    report = report if report is not None else PairReport(str(path))
    pairs = []
    for line in iter_json_lines(path):  # the package's JSONL reader: one bad line is that line's reject
        report.lines += 1
        if not line.ok:
            report.reject(str(path), line.line, line.reason, line.detail, line.text)
            continue
        try:
            pairs.append(parse_pair(line.value))
        except PairError as e:
            report.reject(str(path), line.line, e.reason, e.detail, line.text)
    report.kept += len(pairs)
    (logger.warning if report.rejected else logger.info)("preference pairs %s", report.message())
    return pairs


def write_pairs(path: str | Path, pairs: list[PreferencePair]) -> None:
    """Pairs as MiniMind dpo.jsonl, written atomically."""
    atomic_write_text(path, "".join(json.dumps(p.as_json(), ensure_ascii=False) + "\n" for p in pairs))


def write_rejects(path: str | Path, report: PairReport) -> None:
    """Every rejected line, one JSON object a line (empty file when none), written atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in report.rejects))
