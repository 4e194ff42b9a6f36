"""Reading the cleaned corpus (``runs/R/data/*.jsonl``) for tokenizer training and token packing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..jsonl import INVALID_UTF8, parse_line

DATA_NOTEBOOK = "notebooks/01_data_clean"


def require_file(path: Path, what: str = "") -> Path:
    path = Path(path)
    if not path.is_file():
        folder = path.parent
        hint = f"run {DATA_NOTEBOOK} first"
        if not folder.exists():
            raise FileNotFoundError(f"{folder} not found (no data folder): {hint} to create {path}")
        raise FileNotFoundError(f"{path} not found{what}: {hint}")
    return path


def line_sampled(line: bytes, fraction: float) -> bool:
    """Is this line in a ``fraction`` sample: a hash of its bytes decides, so the sample is spread over the
    whole file and the same on every run."""
    if fraction >= 1.0:
        return True
    h = int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "little")
    return h / 2.0 ** 64 < fraction


def iter_jsonl(path: str | os.PathLike, key: str, fraction: float = 1.0) -> Iterator[Any]:
    """Yield ``obj[key]`` for each non-blank line (of the lines ``line_sampled`` keeps at ``fraction``);
    errors name the file and line."""
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip() or not line_sampled(raw, fraction):
                continue
            obj, bad, detail = parse_line(raw.rstrip(b"\n"))  # the package's JSON-line parser
            if bad is not None:
                what = "not valid UTF-8" if bad == INVALID_UTF8 else "invalid JSON"
                raise ValueError(f"{path}:{lineno}: {what} ({detail}); expected one UTF-8 JSON object a line")
            if not isinstance(obj, dict) or key not in obj:
                raise ValueError(f"{path}:{lineno}: expected an object with a {key!r} key")
            yield obj[key]


def iter_texts(path: str | os.PathLike) -> Iterator[str]:
    """Texts of a pretrain JSONL file (``{"text": ...}`` a line)."""
    for lineno, t in enumerate(iter_jsonl(path, "text"), 1):
        if not isinstance(t, str):
            raise ValueError(f"{path}: record {lineno}: 'text' must be a string, got {type(t).__name__}")
        yield t


def conversation_text(conv: Sequence[dict]) -> str:
    """Plain text of a conversation (contents joined by newlines) for tokenizer training."""
    return "\n".join(str(m.get("content", "")) for m in conv if isinstance(m, dict))


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
    return n
