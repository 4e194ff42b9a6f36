"""Notebook 04's chat data (``chat_source``): every line accounted for, normalised as 01 normalises.

    train, val, report = load_chat_source("run", data_dir=Path("runs/demo/data"))

``chat_source`` is "run" (``data/sft.jsonl`` + ``sft_val.jsonl`` from notebook 01), "chinese" / "english" /
"both" (the built-in chatterbot dialogues) or a path to a chat JSONL file. Every line of a file is either a
conversation that is used or a reject with its line, reason and detail (the reasons of notebook 01:
``invalid_json``, ``bad_conversation``, ``bad_role``, ``bad_role_order``, ``no_assistant_turn``,
``missing_text`` for a line without ``conversations``, ``exact_duplicate`` naming the line it repeats, ...).
Contents go through ``minigpt.data.normalize.normalize``, so SFT reads text as pretraining and prompts do.
For a file or the built-in dialogues ~5% are held out for evaluation by a hash of each conversation.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from . import normalize as textnorm
from . import sources as S

logger = logging.getLogger(__name__)

BUILTIN_CHAT = ("chinese", "english", "both")
NOT_A_CONVERSATION = "not_a_conversation"  # a valid pretraining line ({"text": ...}) in a chat file
EXACT_DUPLICATE = "exact_duplicate"
MAX_LISTED = 5  # rejects listed in a report's message


@dataclass
class ChatReport:
    """What happened to every line of a chat source."""

    source: str
    lines: int = 0
    kept: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    examples: list[dict] = field(default_factory=list)  # the first rejects: {"file", "line", "reason", "detail"}

    def reject(self, file: str, line: int, reason: str, detail: str = "") -> None:
        self.rejected[str(reason)] = self.rejected.get(str(reason), 0) + 1
        if len(self.examples) < MAX_LISTED:
            self.examples.append({"file": file, "line": line, "reason": str(reason), "detail": detail})

    def message(self) -> str:
        """One paragraph for the notebook and the log."""
        text = f"{self.source}: {self.lines} lines, {self.kept} conversations used"
        if self.rejected:
            text += f", {sum(self.rejected.values())} rejected {self.rejected}; first: " + "; ".join(
                f"line {r['line']}: {r['reason']}" + (f" ({r['detail']})" if r["detail"] else "") for r in self.examples)
        return text

    def as_dict(self) -> dict:
        return {"source": self.source, "lines": self.lines, "kept": self.kept, "rejected": dict(self.rejected),
                "examples": list(self.examples)}


def read_chat_file(path: str | Path, report: ChatReport | None = None, dedup: bool = True) -> list[list[dict]]:
    """The valid, normalised conversations of a chat JSONL file (exact repeats dropped with ``dedup``;
    notebook 01's output is deduplicated already); every other line is counted in ``report`` with its
    line, reason and detail."""
    path = Path(path)
    report = report if report is not None else ChatReport(str(path))
    seen: dict[str, int] = {}
    convs: list[list[dict]] = []
    for item in S.iter_jsonl(str(path), max_line_bytes=100_000_000):
        report.lines += 1
        if item.kind == "text":
            report.reject(str(path), item.line, NOT_A_CONVERSATION,
                          "a pretraining document ({\"text\": ...}); notebook 04 reads {\"conversations\": [...]}")
            continue
        if item.kind == "reject":
            report.reject(str(path), item.line, item.value, getattr(item.value, "detail", ""))
            continue
        turns = _normalised(item.value)
        key = json.dumps(turns, ensure_ascii=False)
        if dedup and key in seen:
            report.reject(str(path), item.line, EXACT_DUPLICATE, f"same conversation as {path}:{seen[key]}")
            continue
        seen.setdefault(key, item.line)
        convs.append(turns)
    report.kept += len(convs)
    return convs


def _normalised(turns: list[dict]) -> list[dict]:
    contents = textnorm.normalize([t["content"] for t in turns])
    return [{"role": t["role"], "content": c} for t, c in zip(turns, contents)]


def split_conversations(convs: Iterable[list[dict]]) -> tuple[list[list[dict]], list[list[dict]]]:
    """Hold out ~5% by a hash of each conversation: (train, val)."""
    train, val = [], []
    for turns in convs:
        key = json.dumps(turns, ensure_ascii=False, sort_keys=True)
        h = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")
        (val if h % 20 == 0 else train).append(turns)
    return train, val


def _builtin(language: str, report: ChatReport) -> Iterator[list[dict]]:
    langs = ["chinese", "english"] if language == "both" else [language]
    seen: set[str] = set()
    for lang in langs:
        for path in S.chatterbot_paths(lang):
            for item in S.iter_chatterbot(str(path)):
                report.lines += 1
                if item.kind != "chat":
                    report.reject(str(path), item.line, item.value, getattr(item.value, "detail", ""))
                    continue
                turns = _normalised(item.value)
                key = json.dumps(turns, ensure_ascii=False)
                if key in seen:
                    report.reject(str(path), item.line, EXACT_DUPLICATE, "same conversation as an earlier one")
                    continue
                seen.add(key)
                report.kept += 1
                yield turns


def load_chat_source(chat_source: str, data_dir: Path, run_dir: Path | None = None
                     ) -> tuple[list[list[dict]], list[list[dict]], ChatReport]:
    """(train, val, report) for ``chat_source``; raises with what to do when there is nothing to train on."""
    if chat_source in BUILTIN_CHAT:
        report = ChatReport(f"built-in chatterbot dialogues ({chat_source})")
        train, val = split_conversations(list(_builtin(chat_source, report)))
        return train, val, report
    if chat_source != "run":
        path = Path(chat_source)
        if not path.is_absolute() and not path.exists() and run_dir is not None:
            path = run_dir / path
        if not path.is_file():
            raise FileNotFoundError(f"chat_source: {chat_source} not found (expected a chat JSONL file with "
                                    "{\"conversations\": [...]} lines, or run / chinese / english / both)")
        report = ChatReport(str(path))
        train, val = split_conversations(read_chat_file(path, report))
        _log(report)
        return train, val, report
    sft = Path(data_dir) / "sft.jsonl"
    if not sft.is_file():
        raise FileNotFoundError(f"{sft} not found: run notebooks/01_data_clean first (it writes the chat data), "
                                "or set chat_source to chinese / english / both or a chat .jsonl file")
    report = ChatReport(str(sft))
    train = read_chat_file(sft, report, dedup=False)
    val_path = sft.with_name("sft_val.jsonl")
    val = read_chat_file(val_path, report, dedup=False) if val_path.is_file() else []
    report.source = f"{sft} (+ {val_path.name})" if val_path.is_file() else str(sft)
    _log(report)
    return train, val, report


def no_chat_message(report: ChatReport) -> str:
    """Why there is nothing to fine-tune on, and how to get something."""
    return (f"no chat data: {report.message()}. Notebook 01 writes dialogues to sft.jsonl when its input has "
            "{\"conversations\": [...]} lines (or the built-in chatterbot dialogues); or set chat_source to "
            "chinese / english / both (the built-in dialogues) or to a chat .jsonl file of your own")


def _log(report: ChatReport) -> None:
    (logger.warning if report.rejected else logger.info)("chat data %s", report.message())
