"""Where text comes from: the built-in corpora and the readers for user files.

Every reader is a generator of ``Item`` tuples, one per record, in file order:

    Item(line, pos, kind, value, excerpt)

``kind`` is ``"text"`` (value: str), ``"chat"`` (value: list of {"role","content"} dicts) or
``"reject"`` (value: the reason string). ``line`` is the 1-based line (or row) where the record
starts, so a reject can be found in the file. ``pos`` is an opaque resume token: feed it back
as ``start_pos`` (with ``start_line=line``) and the reader continues right after that record.
For line-based formats it is a byte offset; for csv, parquet and yml it is a record count.

Readers never raise on a bad record; they only raise when a whole file cannot be read
(missing, unreadable format, missing column), with a message naming the file.

Modules: ``records`` (Item, Source, reject reasons, record validation), ``corpora`` (the built-in
corpora), ``readers`` (one reader per file format, ``file_source``, ``iter_source``).
"""

from .corpora import builtin_sources, chatterbot_paths, peoples_daily_path, review_paths, strip_pos_tags
from .readers import (
    chatterbot_to_chat, file_source, iter_chatterbot, iter_csv, iter_jsonl, iter_lines, iter_parquet, iter_source,
    iter_txt,
)
from .records import (
    BAD_CONVERSATION, BAD_ROLE, BAD_ROLE_ORDER, BLANK_LINE, EXCERPT_CHARS, INVALID_CSV, INVALID_JSON, INVALID_UTF8,
    LINE_TOO_LONG, MISSING_TEXT, NO_ASSISTANT_TURN, NOT_AN_OBJECT, NUL_BYTE, ROLES, TEXT_NOT_STRING, Item, Reason, Source,
    check_text, make_excerpt, parse_record, validate_conversation,
)

__all__ = [
    "BAD_CONVERSATION", "BAD_ROLE", "BAD_ROLE_ORDER", "BLANK_LINE", "EXCERPT_CHARS", "INVALID_CSV", "INVALID_JSON",
    "INVALID_UTF8", "LINE_TOO_LONG", "MISSING_TEXT", "NOT_AN_OBJECT", "NO_ASSISTANT_TURN", "NUL_BYTE", "ROLES",
    "TEXT_NOT_STRING", "Item", "Reason", "Source", "builtin_sources", "chatterbot_paths", "chatterbot_to_chat", "check_text",
    "file_source", "iter_chatterbot", "iter_csv", "iter_jsonl", "iter_lines", "iter_parquet", "iter_source",
    "iter_txt", "make_excerpt", "parse_record", "peoples_daily_path", "review_paths", "strip_pos_tags",
    "validate_conversation",
]
