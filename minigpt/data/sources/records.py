"""What every reader yields: the Item and Source records, reject reasons, and record validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

# Reject reasons produced by readers (the cleaning pipeline adds its own).
INVALID_UTF8 = "invalid_utf8"
NUL_BYTE = "nul_byte"
LINE_TOO_LONG = "line_too_long"
BLANK_LINE = "blank_line"
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_TEXT = "missing_text"
TEXT_NOT_STRING = "text_not_string"
BAD_CONVERSATION = "bad_conversation"
BAD_ROLE = "bad_role"
BAD_ROLE_ORDER = "bad_role_order"
NO_ASSISTANT_TURN = "no_assistant_turn"
INVALID_CSV = "invalid_csv"

ROLES = ("system", "user", "assistant")
EXCERPT_CHARS = 200
# Lone surrogates can sneak in through JSON escapes ("\ud800"); they cannot be written as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


class Reason(str):
    """A reject reason: equal to its name (``"bad_conversation"``), with ``detail`` saying what was wrong."""

    detail: str

    def __new__(cls, name: str, detail: str = "") -> "Reason":
        r = super().__new__(cls, name)
        r.detail = detail
        return r


class Item(NamedTuple):
    """One record of a source (see the ``sources`` package docstring)."""

    line: int
    pos: int
    kind: str
    value: object
    excerpt: str


@dataclass(frozen=True)
class Source:
    """One input file. ``name`` groups files in the stats (e.g. both review files are "reviews")."""

    name: str
    path: str
    fmt: str  # jsonl | txt | lines | csv | parquet | chatterbot
    kind: str | None = None  # "text" / "chat" when known up front, None when detected per record
    pos_tagged: bool = False  # People's Daily: word/TAG tokens that the cleaner strips


def make_excerpt(raw: bytes | str) -> str:
    """The first EXCERPT_CHARS characters of a record, for rejects.jsonl (bad bytes shown escaped)."""
    if isinstance(raw, bytes):
        raw = raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="backslashreplace")
    return raw[:EXCERPT_CHARS]


def check_text(text: str) -> str:
    """Reason why a decoded string cannot be used, or ''."""
    # fast C scans; NUL and surrogates are both non-printable, newlines too (so they are taken out of the copy)
    if text.isprintable() or text.replace("\n", "").isprintable():
        return ""
    if "\x00" in text:
        return NUL_BYTE
    if _SURROGATE.search(text):
        return INVALID_UTF8
    return ""


def _kind(x: object) -> str:
    return "null" if x is None else {dict: "an object", list: "a list", str: "a string"}.get(type(x), type(x).__name__)


def _check_turn(k: int, turn: object) -> Reason | None:
    """What is wrong with turn number ``k`` (1-based), or None."""
    if not isinstance(turn, dict):
        return Reason(BAD_CONVERSATION, f"turn {k} is {_kind(turn)}; expected an object with 'role' and 'content'")
    if not isinstance(turn.get("content"), str):
        got = "missing" if "content" not in turn else f"{_kind(turn['content'])}"
        return Reason(BAD_CONVERSATION, f"turn {k}: 'content' is {got}; expected a string")
    if turn.get("role") not in ROLES:
        return Reason(BAD_ROLE, f"turn {k}: role {turn.get('role')!r}; expected one of {', '.join(ROLES)}")
    bad = check_text(turn["content"])
    return Reason(bad, f"turn {k}: content has {'a NUL character' if bad == NUL_BYTE else 'a lone surrogate'}") \
        if bad else None


def validate_conversation(conv: object) -> tuple[list[dict] | None, str]:
    """Check a minimind ``conversations`` list. Returns (turns, '') or (None, reason); the reason is a
    ``Reason`` whose ``detail`` says which turn is wrong and how.

    Allowed: an optional leading system turn, then user/assistant alternating from user, with at
    least one assistant turn. A trailing user turn (nothing answers it) is dropped, not rejected.
    """
    if not isinstance(conv, list) or not conv:
        what = "an empty list" if isinstance(conv, list) else _kind(conv)
        return None, Reason(BAD_CONVERSATION, f"'conversations' is {what}; expected a list of "
                                              "{'role', 'content'} objects")
    turns = []
    for k, turn in enumerate(conv, 1):
        bad = _check_turn(k, turn)
        if bad is not None:
            return None, bad
        turns.append({"role": turn["role"], "content": turn["content"]})
    first = 1 if turns[0]["role"] == "system" else 0
    body = turns[first:]
    for i, turn in enumerate(body):
        want = "user" if i % 2 == 0 else "assistant"
        if turn["role"] != want:
            return None, Reason(BAD_ROLE_ORDER, f"turn {first + i + 1} is {turn['role']!r} where {want!r} was "
                                                "expected (an optional system turn, then user and assistant alternate)")
    if len(body) < 2:
        return None, Reason(NO_ASSISTANT_TURN, f"roles {[t['role'] for t in turns]}: no assistant reply")
    if body[-1]["role"] == "user":
        turns = turns[:-1]
    return turns, ""


def parse_record(obj: object, text_key: str = "text") -> tuple[str, object]:
    """A decoded JSON value -> ("text", str) | ("chat", turns) | ("reject", reason)."""
    if not isinstance(obj, dict):
        return "reject", NOT_AN_OBJECT
    if text_key in obj:
        text = obj[text_key]
        if not isinstance(text, str):
            return "reject", TEXT_NOT_STRING
        bad = check_text(text)
        return ("reject", bad) if bad else ("text", text)
    if "conversations" in obj:
        turns, reason = validate_conversation(obj["conversations"])
        return ("reject", reason) if reason else ("chat", turns)
    return "reject", Reason(MISSING_TEXT, f"keys {sorted(obj)[:10]}; expected {text_key!r} (a document) or "
                                          "'conversations' (a dialogue)")

