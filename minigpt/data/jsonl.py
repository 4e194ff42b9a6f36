"""The one JSON-lines reader: every JSONL file the package reads goes through `parse_line` / `iter_json_lines`.

A line is what lies between two b"\\n" bytes, nothing else: a raw CR (legal JSON whitespace), U+2028 or a
form feed inside a line stays inside it, so line numbers are the ones an editor shows (`str.splitlines`
and text-mode files split on more). Each line is decoded as strict UTF-8 (invalid bytes reject the line
rather than becoming U+FFFD) and parsed on its own; whatever a line holds, including 100,000 nested
brackets (RecursionError) or a 5,000-digit integer (ValueError), it becomes that line's error, never the
reader's. A trailing CR (CRLF files) and a leading UTF-8 BOM are dropped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

INVALID_JSON = "invalid_json"
INVALID_UTF8 = "invalid_utf8"
_BOM = "\ufeff"


@dataclass(frozen=True)
class JsonLine:
    """One non-blank line: `value` when it parsed, else `reason` (invalid_utf8 / invalid_json) and `detail`."""

    line: int  # 1-based, counting every b"\n"
    value: Any
    reason: str | None
    detail: str
    raw: bytes

    @property
    def ok(self) -> bool:
        return self.reason is None

    @property
    def text(self) -> str:
        """The line as text, for an excerpt (invalid bytes shown as U+FFFD here only)."""
        return self.raw.decode("utf-8", errors="replace")


def parse_text(text: str) -> tuple[Any, str | None, str]:
    """(value, None, "") for a line of valid JSON, else (None, "invalid_json", what is wrong)."""
    try:
        return json.loads(text), None, ""
    except json.JSONDecodeError as e:
        where = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno} column {e.colno}"
        # json's messages may end in "at" already ("Unterminated string starting at"): no doubled word
        return None, INVALID_JSON, f"{e.msg} {where}" if e.msg.endswith(" at") else f"{e.msg} at {where}"
    except RecursionError:
        return None, INVALID_JSON, "nested too deeply"
    except ValueError as e:  # e.g. an integer beyond Python's limit on digits
        return None, INVALID_JSON, str(e).split(";")[0]


def parse_line(raw: bytes) -> tuple[Any, str | None, str]:
    """A line's bytes (without its b"\\n") -> (value, reason, detail), as `parse_text` after a strict UTF-8 decode."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, INVALID_UTF8, f"byte 0x{raw[e.start]:02x} at byte {e.start + 1} is not UTF-8 ({e.reason})"
    return parse_text(text.removeprefix(_BOM))


def iter_json_lines(path: str | Path) -> Iterator[JsonLine]:
    """Every non-blank line of `path` as a `JsonLine` (blank lines are skipped but counted)."""
    with open(path, "rb") as f:  # binary files split on b"\n" only
        for n, raw in enumerate(f, 1):
            raw = raw[:-1] if raw.endswith(b"\n") else raw
            if not raw.strip():
                continue
            value, reason, detail = parse_line(raw)
            yield JsonLine(n, value, reason, detail, raw)


def read_json_file(path: str | Path, expected: str) -> Any:
    """A whole JSON file (results, manifests); ValueError naming the file and `expected` when it is not."""
    path = Path(path)
    value, reason, detail = parse_line(path.read_bytes().rstrip(b"\r\n"))
    if reason is not None:
        raise ValueError(f"{path}: {'not UTF-8' if reason == INVALID_UTF8 else 'not valid JSON'} ({detail}); "
                         f"expected {expected}")
    return value
