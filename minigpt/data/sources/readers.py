"""Readers for input files: JSONL, one-document-a-line text, blank-line-separated text, CSV,
parquet and chatterbot YAML, plus ``file_source`` (format from the extension) and ``iter_source``."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterator

from ..jsonl import parse_text
from .records import (
    BAD_CONVERSATION, BLANK_LINE, EXCERPT_CHARS, INVALID_CSV, INVALID_JSON, INVALID_UTF8, LINE_TOO_LONG,
    MISSING_TEXT, NO_ASSISTANT_TURN, NUL_BYTE, TEXT_NOT_STRING, Item, Reason, Source, check_text, make_excerpt, parse_record,
)

_BOM = b"\xef\xbb\xbf"

_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".txt": "txt",
    ".csv": "csv",
    ".parquet": "parquet",
    ".yml": "chatterbot",
    ".yaml": "chatterbot",
}


def file_source(path: str | os.PathLike) -> Source:
    """A user file; the format comes from the extension. Raises if missing or unsupported."""
    p = Path(path)
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"data_files: {str(p)!r} has an unsupported extension {p.suffix!r}; expected one of "
            + ", ".join(sorted(_FORMATS))
        )
    if not p.exists():
        raise FileNotFoundError(f"data_files: {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"data_files: {str(p)!r} is not a regular file")
    if p.stat().st_size == 0:
        raise ValueError(f"data_files: {str(p)!r} is empty; expected at least one record")
    return Source(str(p), str(p), fmt, "chat" if fmt == "chatterbot" else None)


def _iter_raw_lines(
    path: str, max_line_bytes: int, start_pos: int, start_line: int, counters: dict | None
) -> Iterator[tuple[int, int, bytes | None, str]]:
    """Yield (line_no, end_pos, body, reason). ``body`` is None when the line was rejected here.

    Reads with ``readline(limit)`` so an over-long line is never held in memory whole: only
    ``max_line_bytes`` of it are read, the rest is skipped in 1 MB chunks.
    """
    limit = max_line_bytes + 1
    with open(path, "rb") as f:
        f.seek(start_pos)
        pos, line_no = start_pos, start_line
        while True:
            raw = f.readline(limit)
            if not raw:
                return
            line_no += 1
            pos += len(raw)
            if len(raw) == limit and not raw.endswith(b"\n"):
                head = raw[:EXCERPT_CHARS]
                while True:
                    more = f.readline(1 << 20)
                    pos += len(more)
                    if not more or more.endswith(b"\n"):
                        break
                yield line_no, pos, None, LINE_TOO_LONG + "\0" + make_excerpt(head)
                continue
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if raw.startswith(_BOM):
                raw = raw[3:]
                if counters is not None:
                    counters["bom_stripped"] = counters.get("bom_stripped", 0) + 1
            if b"\x00" in raw:
                yield line_no, pos, None, NUL_BYTE + "\0" + make_excerpt(raw)
                continue
            yield line_no, pos, raw, ""


def _iter_text_lines(
    path: str, max_line_bytes: int, start_pos: int, start_line: int, counters: dict | None
) -> Iterator[tuple[int, int, str | None, "Item | None"]]:
    """Decoded, non-blank lines as (line_no, end_pos, text, None); a line rejected on the way (too long,
    NUL byte, invalid UTF-8, blank) comes as (line_no, end_pos, None, its reject Item)."""
    for line_no, pos, raw, reason in _iter_raw_lines(path, max_line_bytes, start_pos, start_line, counters):
        if raw is None:
            reason, excerpt = reason.split("\0", 1)
            yield line_no, pos, None, Item(line_no, pos, "reject", reason, excerpt)
            continue
        text = _decode(raw)
        if text is None:
            yield line_no, pos, None, Item(line_no, pos, "reject", INVALID_UTF8, make_excerpt(raw))
        elif not text.strip():
            yield line_no, pos, None, Item(line_no, pos, "reject", BLANK_LINE, "")
        else:
            yield line_no, pos, text, None


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def iter_jsonl(
    path: str, max_line_bytes: int, start_pos: int = 0, start_line: int = 0, counters: dict | None = None,
    text_key: str = "text",
) -> Iterator[Item]:
    """minimind JSONL: ``{"text": ...}`` or ``{"conversations": [...]}``, detected per line."""
    for line_no, pos, text, rejected in _iter_text_lines(path, max_line_bytes, start_pos, start_line, counters):
        if rejected is not None:
            yield rejected
            continue
        obj, bad, detail = parse_text(text)  # the package's JSON-line parser (minigpt.data.jsonl)
        if bad is not None:
            yield Item(line_no, pos, "reject", Reason(INVALID_JSON, detail), make_excerpt(text))
            continue
        kind, value = parse_record(obj, text_key)
        if kind == "chat" and counters is not None and len(value) < len(obj["conversations"]):
            counters["trailing_user_turn_dropped"] = counters.get("trailing_user_turn_dropped", 0) + 1
        yield Item(line_no, pos, kind, value, make_excerpt(text))


def iter_lines(
    path: str, max_line_bytes: int, start_pos: int = 0, start_line: int = 0, counters: dict | None = None
) -> Iterator[Item]:
    """One document per line (the built-in People's Daily and review files). Blank lines are
    reported as ``blank_line`` so the line accounting stays exact."""
    for line_no, pos, text, rejected in _iter_text_lines(path, max_line_bytes, start_pos, start_line, counters):
        yield rejected if rejected is not None else Item(line_no, pos, "text", text, make_excerpt(text))


def iter_txt(
    path: str, max_line_bytes: int, start_pos: int = 0, start_line: int = 0, counters: dict | None = None
) -> Iterator[Item]:
    """Plain text, one document per blank-line-separated block; ``line`` is the block's first line.

    A block with a bad line (invalid UTF-8, NUL, over-long) is rejected as a whole, reported at
    the bad line. A block longer than ``max_line_bytes`` in total is rejected as ``line_too_long``
    so memory stays bounded even for a file without blank lines.
    """
    block: list[str] = []
    size = 0
    first = 0
    bad: tuple[int, str, str] | None = None
    last_pos = start_pos

    def flush(pos: int) -> Item | None:
        if bad is not None:
            return Item(bad[0], pos, "reject", bad[1], bad[2])
        if block:
            return Item(first, pos, "text", "\n".join(block), make_excerpt(block[0]))
        return None

    for line_no, pos, raw, reason in _iter_raw_lines(path, max_line_bytes, start_pos, start_line, counters):
        last_pos = pos
        text = None if raw is None else _decode(raw)
        if text is not None and not text.strip():
            item = flush(pos)
            if item is not None:
                yield item
            block, size, bad = [], 0, None
            continue
        if not block and bad is None:
            first = line_no
        if bad is not None:
            continue  # skip the rest of a rejected block
        if raw is None:
            r, excerpt = reason.split("\0", 1)
            bad = (line_no, r, excerpt)
        elif text is None:
            bad = (line_no, INVALID_UTF8, make_excerpt(raw))
        else:
            size += len(raw) + 1
            if size > max_line_bytes:
                bad, block = (first, LINE_TOO_LONG, make_excerpt(block[0] if block else text)), []
            else:
                block.append(text)
    item = flush(last_pos)
    if item is not None:
        yield item


def iter_csv(
    path: str, text_column: str, max_line_bytes: int, start_pos: int = 0, start_line: int = 0,
    counters: dict | None = None,
) -> Iterator[Item]:
    """CSV with a header row; ``text_column`` holds the document. ``pos`` counts data rows."""
    csv.field_size_limit(max_line_bytes)  # process-wide setting of the csv module; a longer field is rejected
    with open(path, "rb") as fb:
        # surrogateescape keeps going past bad bytes; they show up as surrogates and are rejected
        f = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(f, strict=True)  # a stray quote is an error, not a silently merged row
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty CSV; expected a header row with a {text_column!r} column") from None
        except csv.Error as e:
            raise ValueError(f"{path}: line 1: unreadable CSV header ({e})") from None
        if text_column not in header:
            raise ValueError(
                f"{path}: no column {text_column!r} in the CSV header; columns are {header[:20]}; "
                "set text_column to one of them"
            )
        col = header.index(text_column)
        row_no = 0
        while True:
            line = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                row_no += 1
                if row_no <= start_pos:
                    continue
                reason = NUL_BYTE if "NUL" in str(e) else (LINE_TOO_LONG if "field larger" in str(e) else INVALID_CSV)
                yield Item(line, row_no, "reject", reason, str(e)[:EXCERPT_CHARS])
                continue
            row_no += 1
            if row_no <= start_pos:
                continue
            if not row:
                yield Item(line, row_no, "reject", BLANK_LINE, "")
                continue
            if col >= len(row):
                yield Item(line, row_no, "reject", MISSING_TEXT, make_excerpt(",".join(row)))
                continue
            text = row[col]
            excerpt = make_excerpt(text.encode("utf-8", "surrogateescape"))
            bad = check_text(text)
            yield Item(line, row_no, "reject", bad, excerpt) if bad else Item(line, row_no, "text", text, excerpt)


def iter_parquet(path: str, text_column: str, start_pos: int = 0, **_: object) -> Iterator[Item]:
    """Parquet, read in record batches of one column; ``line`` is the 1-based row number."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pyarrow is in the dev extra
        raise ImportError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_column not in names:
        raise ValueError(
            f"{path}: no column {text_column!r} in the parquet file; columns are {names[:20]}; "
            "set text_column to one of them"
        )
    row = 0
    for batch in pf.iter_batches(batch_size=2048, columns=[text_column]):
        n = batch.num_rows
        if row + n <= start_pos:
            row += n
            continue
        values = batch.column(0).to_pylist()
        for v in values:
            row += 1
            if row <= start_pos:
                continue
            if v is None:
                yield Item(row, row, "reject", MISSING_TEXT, "")
            elif not isinstance(v, str):
                yield Item(row, row, "reject", TEXT_NOT_STRING, make_excerpt(repr(v)))
            else:
                bad = check_text(v)
                yield Item(row, row, "reject", bad, make_excerpt(v)) if bad else Item(row, row, "text", v, make_excerpt(v))


def _chatterbot_conversations(path: str) -> Iterator[tuple[int, list | None]]:
    """(line, utterances) per conversation of a chatterbot yml; utterances None if malformed."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        # compose (not load) so every conversation keeps its line number
        root = yaml.compose(f, Loader=loader)
    if root is None or not isinstance(root, yaml.MappingNode):
        raise ValueError(f"{path}: expected a chatterbot YAML mapping with a 'conversations' list")
    convs = None
    for key, value in root.value:
        if getattr(key, "value", None) == "conversations":
            convs = value
    if not isinstance(convs, yaml.SequenceNode):
        raise ValueError(f"{path}: no 'conversations' list (expected the chatterbot corpus format)")
    for node in convs.value:
        line = node.start_mark.line + 1
        if not isinstance(node, yaml.SequenceNode) or not all(isinstance(u, yaml.ScalarNode) for u in node.value):
            yield line, None
        else:
            yield line, [str(u.value) for u in node.value]


def chatterbot_to_chat(utterances: list[str]) -> list[dict]:
    """Alternate user/assistant from the first utterance; a trailing unanswered user turn is dropped."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": u} for i, u in enumerate(utterances)]
    if turns and turns[-1]["role"] == "user":
        turns.pop()
    return turns


def iter_chatterbot(
    path: str, start_pos: int = 0, as_text: bool = False, counters: dict | None = None, **_: object
) -> Iterator[Item]:
    """chatterbot yml -> chat records (or, with ``as_text``, one text document per dialogue)."""
    for i, (line, utts) in enumerate(_chatterbot_conversations(path), start=1):
        if i <= start_pos:
            continue
        if utts is None:
            yield Item(line, i, "reject", BAD_CONVERSATION, "")
            continue
        excerpt = make_excerpt(" / ".join(utts))
        if as_text:
            yield Item(line, i, "text", "\n".join(utts), excerpt)
            continue
        turns = chatterbot_to_chat(utts)
        if counters is not None and turns and len(turns) < len(utts):
            counters["trailing_user_turn_dropped"] = counters.get("trailing_user_turn_dropped", 0) + 1
        if not turns:
            yield Item(line, i, "reject", NO_ASSISTANT_TURN, excerpt)
        else:
            yield Item(line, i, "chat", turns, excerpt)


def iter_source(
    src: Source, *, text_column: str = "text", max_line_bytes: int = 1_000_000, start_pos: int = 0,
    start_line: int = 0, counters: dict | None = None,
) -> Iterator[Item]:
    """Dispatch to the reader for ``src.fmt``."""
    kw = dict(start_pos=start_pos, start_line=start_line, counters=counters)
    if src.fmt == "jsonl":
        return iter_jsonl(src.path, max_line_bytes, text_key=text_column, **kw)
    if src.fmt == "lines":
        return iter_lines(src.path, max_line_bytes, **kw)
    if src.fmt == "txt":
        return iter_txt(src.path, max_line_bytes, **kw)
    if src.fmt == "csv":
        return iter_csv(src.path, text_column, max_line_bytes, **kw)
    if src.fmt == "parquet":
        return iter_parquet(src.path, text_column, start_pos=start_pos)
    if src.fmt == "chatterbot":
        return iter_chatterbot(src.path, start_pos=start_pos, counters=counters)
    if src.fmt == "chatterbot_text":
        return iter_chatterbot(src.path, start_pos=start_pos, as_text=True)
    raise ValueError(f"{src.path}: unknown source format {src.fmt!r}")
