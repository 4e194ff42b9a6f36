"""A native byte-level BPE encoder giving exactly the ids of ``MiniTokenizer.encode_batch``, for packing.

The C kernel (bpe_encode.c next to this file, compiled on first use by minigpt/native.py, like the decode
step) does what the tokenizer.json of a MiniTokenizer says: remove U+FDD0
(the normalizer), split with the ByteLevel pre-tokenizer's GPT-2 pattern
``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``, map bytes to the
256 byte tokens and apply the merges lowest rank first (leftmost on ties), as `tokenizers`' BPE does.
Special-token text is ordinary text (``encode_special_tokens=True``, as MiniTokenizer sets it).

The regex's character classes come from Python's ``unicodedata``: ``\\p{L}`` = categories L*, ``\\p{N}`` =
N*, ``\\s`` = U+0009..U+000D, U+0085 and Z* (Oniguruma's definition, the engine `tokenizers` uses). A code
point Python's Unicode data leaves unassigned may be assigned in the engine's newer Unicode version, so
its class is unknown: a document holding one is encoded by `tokenizers` instead (and still matches).

``fast_encoder(tok)`` returns the encoder, or None (logged once) when the tokenizer is of another shape,
no C compiler is found, or ``MINIGPT_NO_NATIVE=1`` is set; callers then use ``tok.encode_batch``.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...native import build_library
from .minitokenizer import MiniTokenizer, _bytes_to_unicode
from .special import ESCAPE_MARK

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "bpe_encode.c"
OPT_OUT_ENV = "MINIGPT_NO_NATIVE"  # "1": never use native kernels for encoding
N_CODEPOINTS = 0x110000
OTHER, LETTER, NUMBER, SPACE, UNSAFE = range(5)  # mirrors C_* in bpe_encode.c
_SPACES = {0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85}
_P = ctypes.c_void_p


class UnsupportedTokenizer(ValueError):
    """The tokenizer's pipeline is not the one the native encoder implements."""


@lru_cache(maxsize=1)
def char_classes() -> bytes:
    """One class byte per code point (OTHER, LETTER, NUMBER, SPACE, or UNSAFE for unassigned ones)."""
    by_cat = {"Zs": SPACE, "Zl": SPACE, "Zp": SPACE, "Cn": UNSAFE, "Cs": UNSAFE}
    by_cat.update({c: LETTER for c in ("Lu", "Ll", "Lt", "Lm", "Lo")})
    by_cat.update({c: NUMBER for c in ("Nd", "Nl", "No")})
    cat = unicodedata.category
    table = bytearray(by_cat.get(cat(chr(cp)), OTHER) for cp in range(N_CODEPOINTS))
    for cp in _SPACES:
        table[cp] = SPACE
    return bytes(table)


@lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    """The compiled kernel (built on first use); RuntimeError/OSError when it cannot be built."""
    lib = ctypes.CDLL(str(build_library(SOURCE)))
    lib.mg_bpe_new.restype = _P
    lib.mg_bpe_new.argtypes = [ctypes.c_char_p, _P, _P, ctypes.c_int64, ctypes.c_int]
    lib.mg_bpe_free.restype = None
    lib.mg_bpe_free.argtypes = [_P]
    lib.mg_bpe_encode.restype = ctypes.c_int64
    lib.mg_bpe_encode.argtypes = [_P, ctypes.c_char_p, _P, ctypes.c_int64, ctypes.c_int64, _P, _P, ctypes.c_int]
    lib.mg_bpe_pretokenize.restype = ctypes.c_int64
    lib.mg_bpe_pretokenize.argtypes = [_P, ctypes.c_char_p, ctypes.c_int64, _P, ctypes.c_int64]
    return lib


def _check_pipeline(cfg: dict[str, Any]) -> None:
    """UnsupportedTokenizer unless tokenizer.json is the pipeline bpe_encode.c implements."""
    norm, pre, model = cfg.get("normalizer"), cfg.get("pre_tokenizer") or {}, cfg.get("model") or {}
    replace_mark = {"type": "Replace", "pattern": {"String": ESCAPE_MARK}, "content": ""}
    checks = {
        "normalizer": norm is None or norm == replace_mark,
        "pre_tokenizer": pre.get("type") == "ByteLevel" and pre.get("add_prefix_space") is False
        and pre.get("use_regex", True) is True,
        "post_processor": cfg.get("post_processor") is None,
        "model": model.get("type") == "BPE" and model.get("dropout") is None and not model.get("byte_fallback")
        and not model.get("ignore_merges") and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix"),
        "added_tokens": all(t.get("special") for t in cfg.get("added_tokens", [])),
        "truncation/padding": cfg.get("truncation") is None and cfg.get("padding") is None,
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise UnsupportedTokenizer(f"tokenizer.json {', '.join(bad)} differ from what the native encoder implements")


def _tables(cfg: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(byte ids (256,), merges (n, 4): left id, right id, rank, merged id) from tokenizer.json's model."""
    vocab: dict[str, int] = cfg["model"]["vocab"]
    try:
        byte_ids = np.array([vocab[ch] for _, ch in sorted(_bytes_to_unicode().items())], dtype=np.uint32)
    except KeyError as e:
        raise UnsupportedTokenizer(f"byte token {e.args[0]!r} is not in the vocabulary") from None
    rows = []
    for rank, m in enumerate(cfg["model"]["merges"]):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise UnsupportedTokenizer(f"merge {rank} ({a!r}, {b!r}) names a token not in the vocabulary")
        rows.append((vocab[a], vocab[b], rank, vocab[a + b]))
    return byte_ids, np.array(rows, dtype=np.uint32).reshape(-1, 4)


def _n_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class FastEncoder:
    """Encodes many documents at once in C with a tokenizer's merges; ids equal ``tok.encode_batch``'s."""

    def __init__(self, tok: MiniTokenizer, n_threads: int | None = None) -> None:
        if not getattr(tok.backend, "encode_special_tokens", False):
            raise UnsupportedTokenizer("the tokenizer matches special tokens in text (encode_special_tokens=False)")
        cfg = json.loads(tok.to_json())
        _check_pipeline(cfg)
        byte_ids, merges = _tables(cfg)
        self.tok = tok
        self.n_threads = n_threads or _n_threads()
        self._lib = load_library()
        self._lock = threading.Lock()  # the C encoder's per-thread word caches belong to one call at a time
        self._enc = self._lib.mg_bpe_new(char_classes(), byte_ids.ctypes.data, merges.ctypes.data, len(merges),
                                         self.n_threads)
        if not self._enc:
            raise MemoryError("native BPE encoder: out of memory")

    def __del__(self) -> None:
        enc, self._enc = getattr(self, "_enc", None), None
        if enc:
            self._lib.mg_bpe_free(enc)

    def encode_packed(self, texts: Sequence[str], eos_id: int | None = None,
                      dtype: np.dtype | type = np.uint32) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths): all documents' ids back to back (each preceded by `eos_id` when given) as
        `dtype`, and each document's token count (eos not counted). Order is the input order."""
        texts = list(texts)
        n = len(texts)
        encoded = [t.encode("utf-8") for t in texts]  # a lone surrogate raises UnicodeEncodeError here
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
        out = np.empty(int(offsets[-1]) + n, dtype=np.uint32)
        counts = np.empty(n, dtype=np.int64)
        with self._lock:
            total = self._lib.mg_bpe_encode(self._enc, b"".join(encoded), offsets.ctypes.data, n,
                                            -1 if eos_id is None else int(eos_id), out.ctypes.data,
                                            counts.ctypes.data, self.n_threads)
        if total < 0:
            raise MemoryError("native BPE encoder: out of memory")
        ids = out[:total]
        unsafe = np.flatnonzero(counts < 0)
        if unsafe.size:
            ids, counts = self._splice_unsafe(ids, counts, unsafe, [texts[i] for i in unsafe], eos_id is not None)
        return np.array(ids, dtype=dtype), counts

    def _splice_unsafe(self, ids: np.ndarray, counts: np.ndarray, unsafe: np.ndarray, texts: list[str],
                       lead: bool) -> tuple[np.ndarray, np.ndarray]:
        """Insert `tokenizers`' ids of the documents the kernel left out (their slots are empty)."""
        fallback = self.tok.encode_batch(texts)
        sizes = np.where(counts < 0, 0, counts) + int(lead)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + int(lead)  # where each doc's ids begin
        where = np.repeat(starts[unsafe], [len(x) for x in fallback])
        values = np.fromiter((i for x in fallback for i in x), dtype=np.uint32, count=len(where))
        counts = counts.copy()
        counts[unsafe] = [len(x) for x in fallback]
        return np.insert(ids, where, values), counts

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Like ``MiniTokenizer.encode_batch`` (lists of ints; for tests and small inputs)."""
        ids, counts = self.encode_packed(texts)
        return [part.tolist() for part in np.split(ids, np.cumsum(counts)[:-1])] if len(counts) else []

    def pretokenize(self, text: str) -> list[str] | None:
        """The pre-tokens the kernel splits `text` (without U+FDD0) into; None if it holds an unsafe character."""
        data = text.encode("utf-8")
        ends = np.empty(len(data) + 1, dtype=np.int64)
        k = self._lib.mg_bpe_pretokenize(self._enc, data, len(data), ends.ctypes.data, len(ends))
        if k < 0:
            return None
        bounds = [0, *ends[:k].tolist()]
        return [data[a:b].decode("utf-8") for a, b in zip(bounds, bounds[1:])]


_encoders: dict[str, FastEncoder | None] = {}


def fast_encoder(tok: MiniTokenizer) -> FastEncoder | None:
    """The native encoder for `tok` (one per tokenizer hash), or None when it cannot be used; the
    reason, or that it is used, is logged once per tokenizer."""
    if os.environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        if "opt-out" not in _encoders:
            logger.info("%s is set: encoding with tokenizers", OPT_OUT_ENV)
            _encoders["opt-out"] = None
        return None
    if tok.sha256 not in _encoders:
        if len(_encoders) >= 4:  # bounded: each holds a class table and per-thread word caches
            _encoders.clear()
        try:
            enc: FastEncoder | None = FastEncoder(tok)
            logger.info("encoding with the native BPE encoder (%s, %d threads)", SOURCE.name, enc.n_threads)
        except (UnsupportedTokenizer, RuntimeError, OSError, subprocess.SubprocessError) as e:
            enc = None
            logger.warning("native BPE encoder unavailable, encoding with tokenizers: %s", e)
        _encoders[tok.sha256] = enc
    return _encoders[tok.sha256]  # the same hash is the same tokenizer.json, so the same ids
