"""Streaming cleaning pipeline: every input record is either kept or accounted for.

    cfg = CleanConfig(data_files=["my.jsonl"])
    stats = run_cleaning(cfg, "runs/demo/data")

Reads the sources record by record (memory does not grow with input size beyond the dedup
tables: ~12-23 bytes per kept document for exact dedup, and as much again per LSH band, 9 by
default, with near dedup), cleans and filters each document,
removes exact and near duplicates, splits train/val by a hash of the text and writes:

    train.jsonl, val.jsonl        {"text": ...} per line
    sft.jsonl, sft_val.jsonl      {"conversations": [...]} per line
    rejects.jsonl                 {"file", "line", "reason", "excerpt", "source", "detail"} per rejected record
    stats.json                    counts by reason, per source, per cleaning step

Outputs are written under temporary names and renamed when the run completes. A checkpoint
(``.clean_state.json``) records how far each output file and each input has got; an interrupted
run started again truncates the outputs back to the checkpoint and carries on, so the result
equals an uninterrupted run byte for byte. The dedup tables are rebuilt from append-only key logs.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import logging
import os
import random
import re
import tempfile
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from json.encoder import encode_basestring as _encode_str  # C, ensure_ascii=False flavour

from ..atomic import atomic_write_text
from . import sources as S

if TYPE_CHECKING:  # pandas is imported only where tables are built
    import pandas

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- config


@dataclass
class CleanConfig:
    """Parameters of notebook 01 (every field is a notebook parameter).

    Sources: with ``data_files`` empty, the built-in corpora (see ``sources.builtin_sources``);
    with files, only those files unless ``use_full_data`` adds every built-in source as well.
    A JSONL line is a pretrain document (``text``) or a dialogue (``conversations``), told apart
    per line; dialogues go to ``sft*.jsonl``.

    ``max_data_size`` caps kept pretrain documents and, separately, kept dialogues. Records read
    after a cap is reached are counted as ``over_cap``; a file stops being read once every kind
    of record it has produced is full, and later sources of a full kind are skipped.

    Full-width -> half-width runs before NFKC, which would map the same characters, so switching
    ``fullwidth_to_halfwidth`` off changes the output only when ``nfkc`` is off as well.
    Quality filters and near dedup apply to pretrain documents; dialogues get the cleaning steps,
    ``max_chars`` (on all turns together) and exact dedup. Near dedup declares a duplicate when
    one LSH band of the MinHash signature collides with a kept document's (no pairwise check),
    so pairs somewhat below the threshold are sometimes caught too.
    """

    data_files: list[str] = field(default_factory=list)  # user files; empty = built-in corpora
    use_full_data: bool = False  # every built-in source (plus data_files)
    max_data_size: int = 0  # cap on kept documents (and, separately, on kept dialogues); 0 = no cap
    text_column: str = "text"  # text field for csv / parquet / jsonl
    sft_language: str = "chinese"  # chatterbot dialogues for SFT: chinese | english | both
    val_fraction: float = 0.02
    min_chars: int = 8  # pretrain documents shorter than this are dropped (dialogues are exempt)
    max_chars: int = 50_000
    max_line_bytes: int = 1_000_000  # longer input lines are rejected without being read whole
    # cleaning steps, in the order they run
    strip_pos_tags: bool = True  # People's Daily word/TAG -> word
    fullwidth_to_halfwidth: bool = True
    nfkc: bool = True
    remove_html: bool = True
    remove_urls: bool = True
    strip_control: bool = True
    collapse_whitespace: bool = True
    # quality filters (Gopher / C4 style, adapted to characters because Chinese has no spaces)
    quality_filter: bool = True
    min_letter_fraction: float = 0.5  # letters+digits (CJK, Latin, ...) among non-space chars
    max_symbol_fraction: float = 0.1  # chars that are neither letters, digits nor punctuation
    min_cjk_fraction: float = 0.0  # 0 = off; e.g. 0.3 keeps mostly-Chinese documents only
    max_char_run: int = 16  # reject a character repeated more than this many times in a row
    max_dup_line_fraction: float = 0.3  # share of repeated lines within a document
    dup_ngram_size: int = 10  # characters per n-gram for the repeated n-gram share
    max_dup_ngram_fraction: float = 0.25
    # dedup
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dedup_threshold: float = 0.8  # estimated Jaccard similarity of character shingles
    near_dedup_ngram: int = 5
    near_dedup_num_perm: int = 128
    checkpoint_every: int = 20_000  # records between resume checkpoints
    progress: bool = True

    def validate(self) -> None:
        def bad(name: str, expected: str) -> None:
            raise ValueError(f"CleanConfig.{name} = {getattr(self, name)!r}: expected {expected}")

        if not isinstance(self.data_files, list) or not all(isinstance(p, (str, os.PathLike)) for p in self.data_files):
            bad("data_files", "a list of file paths")
        for name in ("max_data_size", "min_chars"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                bad(name, "an integer >= 0")
        for name in ("max_chars", "max_line_bytes", "max_char_run", "dup_ngram_size", "near_dedup_ngram",
                     "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if self.max_chars < self.min_chars:
            bad("max_chars", f"at least min_chars ({self.min_chars})")
        if not isinstance(self.text_column, str) or not self.text_column:
            bad("text_column", "a non-empty column name")
        if self.sft_language not in ("chinese", "english", "both"):
            bad("sft_language", "'chinese', 'english' or 'both'")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "a number in [0, 1)")
        for name in ("min_letter_fraction", "max_symbol_fraction", "min_cjk_fraction", "max_dup_line_fraction",
                     "max_dup_ngram_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "a fraction in [0, 1]")
        if not 0.0 < self.near_dedup_threshold < 1.0:
            bad("near_dedup_threshold", "a similarity strictly between 0 and 1")
        if not isinstance(self.near_dedup_num_perm, int) or not 8 <= self.near_dedup_num_perm <= 1024:
            bad("near_dedup_num_perm", "an integer in [8, 1024]")


# --------------------------------------------------------------------------- reasons

EMPTY_AFTER_CLEAN = "empty_after_clean"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
LOW_LETTER_FRACTION = "low_letter_fraction"
HIGH_SYMBOL_FRACTION = "high_symbol_fraction"
LOW_CJK_FRACTION = "low_cjk_fraction"
REPEATED_CHAR_RUN = "repeated_char_run"
DUPLICATE_LINES = "duplicate_lines"
DUPLICATE_NGRAMS = "duplicate_ngrams"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"

REASONS = [
    S.INVALID_UTF8, S.NUL_BYTE, S.LINE_TOO_LONG, S.BLANK_LINE, S.INVALID_JSON, S.NOT_AN_OBJECT, S.MISSING_TEXT,
    S.TEXT_NOT_STRING, S.BAD_CONVERSATION, S.BAD_ROLE, S.BAD_ROLE_ORDER, S.NO_ASSISTANT_TURN, S.INVALID_CSV,
    EMPTY_AFTER_CLEAN, TOO_SHORT, TOO_LONG, LOW_LETTER_FRACTION, HIGH_SYMBOL_FRACTION, LOW_CJK_FRACTION,
    REPEATED_CHAR_RUN, DUPLICATE_LINES, DUPLICATE_NGRAMS, EXACT_DUPLICATE, NEAR_DUPLICATE,
]
STEPS = ["bom_stripped", "strip_pos_tags", "fullwidth_to_halfwidth", "nfkc", "remove_html", "remove_urls",
         "strip_control", "collapse_whitespace", "trailing_user_turn_dropped"]

# --------------------------------------------------------------------------- text cleaning

_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_FULLWIDTH[0x3000] = 0x20
_FULLWIDTH_RE = re.compile("[\uff01-\uff5e\u3000]+")
# C0/C1 controls except \t \n \r, zero-width and bidi format characters, BOM, surrogates
_CONTROL_RE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb\ud800-\udfff]+"
)
_HTML_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]{0,500})?/?>|<!--.*?-->", re.S)
_HTML_ENTITY_RE = re.compile(r"&(?:[A-Za-z]{2,8}|#\d{1,7}|#[xX][0-9A-Fa-f]{1,6});")
# ASCII-only URL body so a URL glued to Chinese text stops where the Chinese starts
_URL_RE = re.compile(r"(?:https?://|ftp://|www\.)[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+", re.I)
_HSPACE_RE = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_NEWLINES_RE = re.compile(r" ?\n[ \n]*")
_SPACE_RE = re.compile(r"\s+")
# punctuation that ordinary prose uses (ASCII, general, CJK, full-width, bullets such as ● and the
# ○ used as a zero in 二○○○年, the ~ of informal Chinese); any other non-letter, non-digit,
# non-space character counts as a "symbol" for the quality filter
_PUNCT_CHARS = "!\"'(),-.:;?%/~\u00b7" + "".join(
    chr(c) for lo, hi in [(0x2010, 0x2027), (0x2030, 0x205E), (0x25A0, 0x25FF), (0x2605, 0x2606), (0x3000, 0x303F),
                          (0xFF01, 0xFF65), (0xFE30, 0xFE4F)] for c in range(lo, hi + 1))
_CJK_RANGES = [(0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
               (0x20000, 0x2FFFF)]
SPACE, WORD, PUNCT, SYMBOL = 0, 1, 2, 3
_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _char_class(ch: str) -> int:
    if ch.isspace():
        return SPACE
    if ch.isalnum():  # letters and digits of every script, CJK included
        return WORD
    return PUNCT if ch in _PUNCT_CHARS else SYMBOL


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Character class and CJK flag for every BMP code point (built once, ~40 ms), so a whole batch
    of documents is classified with one numpy lookup instead of a Python loop over characters."""
    global _TABLES
    if _TABLES is None:
        cls = np.fromiter((_char_class(chr(c)) for c in range(0x10000)), dtype=np.uint8, count=0x10000)
        cls[0xD800:0xE000] = SYMBOL
        cjk = np.zeros(0x10000, dtype=bool)
        for lo, hi in _CJK_RANGES:
            if lo < 0x10000:
                cjk[lo:hi + 1] = True
        _TABLES = (cls, cjk)
    return _TABLES


def _codepoints(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points of all texts concatenated, lengths, start offsets)."""
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cp = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return cp, lens, np.cumsum(lens) - lens


def _ngram_hashes(cp: np.ndarray, lens: np.ndarray, starts: np.ndarray, n: int,
                  docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mixed 64-bit hashes of every character n-gram of the selected docs (each doc must have
    len >= n), and the number of n-grams per selected doc. Polynomial hash, wrapping mod 2**64."""
    c = cp.astype(np.uint64)
    m = c.size - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64), np.zeros(len(docs), np.int64)
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):
        h *= _U64(1_000_003)
        h += c[k:k + m]
    counts = lens[docs] - n + 1
    seg = np.cumsum(counts) - counts
    pos = np.repeat(starts[docs] - seg, counts) + np.arange(int(counts.sum()))
    return _mix64(h[pos]), counts


_BLOCK_TAGS = {"br", "p", "div", "li", "tr", "td", "th", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol"}


def _html_tag(m: re.Match) -> str:
    name = re.match(r"</?([A-Za-z0-9]*)", m.group())
    return "\n" if name and name.group(1).lower() in _BLOCK_TAGS else ""


def _char_run_re(max_run: int) -> re.Pattern:
    return re.compile(r"(\S)\1{%d,}" % max_run)


def _to_halfwidth(m: re.Match) -> str:
    return m.group().translate(_FULLWIDTH)


def _collapse_newlines(m: re.Match) -> str:
    return "\n\n" if m.group().count("\n") > 1 else "\n"


class Cleaner:
    """Per-document cleaning and filtering; counts how many documents each step changed."""

    def __init__(self, cfg: CleanConfig, steps: dict[str, int]):
        self.cfg = cfg
        self.steps = steps
        self.run_re = _char_run_re(cfg.max_char_run)

    def normalize(self, s: str, pos_tagged: bool = False) -> str:
        """All enabled cleaning steps for one string (see ``normalize_batch``)."""
        return self.normalize_batch([s], [pos_tagged])[0]

    def normalize_batch(self, texts: list[str], pos_tagged: list[bool]) -> list[str]:
        """Cleaning steps in order: POS tags, full-width, NFKC, HTML, URLs, control, whitespace.

        Full-width -> half-width runs over the whole batch with numpy: per string, both a regex
        and str.translate cost more than everything else together on Chinese text.
        """
        cfg, steps = self.cfg, self.steps
        if cfg.strip_pos_tags and any(pos_tagged):
            texts = list(texts)
            for i, (t, tagged) in enumerate(zip(texts, pos_tagged)):
                if tagged:
                    u = S.strip_pos_tags(t)
                    if u != t:
                        steps["strip_pos_tags"] += 1
                        texts[i] = u
        if cfg.fullwidth_to_halfwidth and texts:
            texts = self._halfwidth(texts)
        return [self._normalize_rest(t) for t in texts]

    def _halfwidth(self, texts: list[str]) -> list[str]:
        cp, lens, starts = _codepoints(texts)
        hit = ((cp >= 0xFF01) & (cp <= 0xFF5E)) | (cp == 0x3000)
        if not hit.any():
            return texts
        cp = np.where(hit, np.where(cp == 0x3000, 0x20, cp - 0xFEE0), cp).astype(np.uint32)
        changed = np.bincount(np.repeat(np.arange(len(texts)), lens), weights=hit, minlength=len(texts)) > 0
        self.steps["fullwidth_to_halfwidth"] += int(changed.sum())
        joined = cp.tobytes().decode("utf-32-le", "surrogatepass")  # 1:1 mapping: lengths unchanged
        return [joined[s0:s0 + n] if c else t
                for t, s0, n, c in zip(texts, starts.tolist(), lens.tolist(), changed.tolist())]

    def _normalize_rest(self, s: str) -> str:
        cfg, steps = self.cfg, self.steps
        # is_normalized is a quick check; the full NFKC pass is slow, so it runs only when needed
        if cfg.nfkc and not unicodedata.is_normalized("NFKC", s):
            steps["nfkc"] += 1
            s = unicodedata.normalize("NFKC", s)
        if cfg.remove_html and ("<" in s or "&" in s):
            # block tags become line breaks, inline ones vanish (a space would split Chinese words)
            t = _HTML_TAG_RE.sub(_html_tag, s)
            if "&" in t:
                t = _HTML_ENTITY_RE.sub(lambda m: html.unescape(m.group()), t)
            if t != s:
                steps["remove_html"] += 1
                s = t
        if cfg.remove_urls and ("://" in s or "www." in s or "WWW." in s):
            t = _URL_RE.sub("", s)
            if t != s:
                steps["remove_urls"] += 1
                s = t
        # isprintable() is a fast C scan that is False for every control, format or non-space
        # whitespace character; newlines aside, most documents are printable and skip the regexes
        odd = not s.isprintable() and not s.replace("\n", " ").isprintable()
        if cfg.strip_control and odd and _CONTROL_RE.search(s):
            s = _CONTROL_RE.sub("", s)
            steps["strip_control"] += 1
        if cfg.collapse_whitespace:
            t = s
            if ("  " in t or odd) and _HSPACE_RE.search(t):
                t = _HSPACE_RE.sub(" ", t)
            if " \n" in t or "\n " in t or "\n\n" in t:
                t = _NEWLINES_RE.sub(_collapse_newlines, t)
            t = t.strip()
            if t != s:
                steps["collapse_whitespace"] += 1
                s = t
        return s

    def quality(self, s: str) -> tuple[str, str]:
        """(reason, detail) for a document that fails a quality rule, else ('', '')."""
        return self.quality_batch([s])[0]

    def quality_batch(self, texts: list[str]) -> list[tuple[str, str]]:
        """Quality rules for a batch of non-empty cleaned documents, vectorised over all their
        characters; each rule is a pure function of one document, checked in a fixed order."""
        cfg = self.cfg
        out = [("", "")] * len(texts)
        if not texts:
            return out
        cls_table, cjk_table = _tables()
        cp, lens, starts = _codepoints(texts)
        bmp = np.minimum(cp, 0xFFFF)
        cls = cls_table[bmp]
        astral = np.nonzero(cp > 0xFFFF)[0]
        if astral.size:  # rare: classify the few characters outside the BMP one by one
            cls[astral] = [_char_class(chr(int(c))) for c in cp[astral]]
        ndoc = len(texts)
        doc = np.repeat(np.arange(ndoc), lens)
        counts = np.bincount(doc * 4 + cls, minlength=ndoc * 4).reshape(ndoc, 4)
        nonspace = lens - counts[:, SPACE]
        safe = np.maximum(nonspace, 1)
        letter_frac = counts[:, WORD] / safe
        symbol_frac = counts[:, SYMBOL] / safe
        if cfg.min_cjk_fraction > 0:
            cjk = cjk_table[bmp]
            if astral.size:
                cjk[astral] = [_is_cjk(int(c)) for c in cp[astral]]
            cjk_frac = np.bincount(doc, weights=cjk, minlength=ndoc) / safe
        # longest run of one repeated non-space character, per document
        same = np.zeros(cp.size, dtype=bool)
        same[1:] = (cp[1:] == cp[:-1]) & (doc[1:] == doc[:-1]) & (cls[1:] != SPACE)
        csum = np.cumsum(same)
        run = csum - np.maximum.accumulate(np.where(same, 0, csum))  # equal neighbours so far
        max_run = np.maximum.reduceat(run, starts) + 1
        # share of repeated character n-grams, per document long enough to repeat one
        n = cfg.dup_ngram_size
        dup_frac = np.zeros(ndoc)
        long_docs = np.nonzero(lens - n + 1 > n)[0]
        if long_docs.size:
            hv, grams = _ngram_hashes(cp, lens, starts, n, long_docs)
            # owner in the top 24 bits, 40 bits of hash below: one plain sort finds the distinct
            # n-grams of every document at once (np.unique with return_index is a slower stable sort)
            owner = np.repeat(np.arange(long_docs.size, dtype=np.uint64), grams)
            key = np.sort((owner << _U64(40)) | (hv >> _U64(24)))
            first = np.ones(key.size, dtype=bool)
            first[1:] = key[1:] != key[:-1]
            uniq = np.bincount((key[first] >> _U64(40)).astype(np.int64), minlength=long_docs.size)
            dup_frac[long_docs] = 1.0 - uniq / grams
        # plain Python floats: indexing numpy arrays element by element is slow
        nonspace, letter_frac, symbol_frac = nonspace.tolist(), letter_frac.tolist(), symbol_frac.tolist()
        max_run, dup_frac = max_run.tolist(), dup_frac.tolist()
        if cfg.min_cjk_fraction > 0:
            cjk_frac = cjk_frac.tolist()
        for i, s in enumerate(texts):
            if nonspace[i] == 0:
                out[i] = (EMPTY_AFTER_CLEAN, "")
            elif letter_frac[i] < cfg.min_letter_fraction:
                out[i] = (LOW_LETTER_FRACTION, f"letter_fraction={letter_frac[i]:.2f}")
            elif symbol_frac[i] > cfg.max_symbol_fraction:
                out[i] = (HIGH_SYMBOL_FRACTION, f"symbol_fraction={symbol_frac[i]:.2f}")
            elif cfg.min_cjk_fraction > 0 and cjk_frac[i] < cfg.min_cjk_fraction:
                out[i] = (LOW_CJK_FRACTION, f"cjk_fraction={cjk_frac[i]:.2f}")
            elif max_run[i] > cfg.max_char_run:
                m = self.run_re.search(s)
                out[i] = (REPEATED_CHAR_RUN, f"{m.group(1)!r} x{m.end() - m.start()}" if m else f"run={max_run[i]}")
            elif "\n" in s and (frac := _dup_line_fraction(s)) > cfg.max_dup_line_fraction:
                out[i] = (DUPLICATE_LINES, f"dup_line_fraction={frac:.2f}")
            elif dup_frac[i] > cfg.max_dup_ngram_fraction:
                out[i] = (DUPLICATE_NGRAMS, f"dup_{n}gram_fraction={dup_frac[i]:.2f}")
        return out


def _dup_line_fraction(s: str) -> float:
    lines = [ln for ln in s.split("\n") if ln]
    return 1.0 - len(set(lines)) / len(lines) if len(lines) > 1 else 0.0


def dedup_key(text: str) -> str:
    """The normalised form that exact dedup and the split hash: case-folded, whitespace removed."""
    return "".join(text.lower().split())


def text_hash(key: str) -> int:
    """Stable 64-bit hash (never 0: 0 marks an empty slot in the hash table)."""
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h or 1


def is_val(h: int, val_fraction: float) -> bool:
    """Train/val by hash: a document's side depends only on its own text, so adding data never moves it."""
    return (h >> 11) / float(1 << 53) < val_fraction


# --------------------------------------------------------------------------- hash set and MinHash/LSH

_U64 = np.uint64


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place friendly, wrapping uint64 arithmetic)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


class HashSet64:
    """A set of non-zero uint64 keys in one numpy array (open addressing, linear probing).

    ~12-23 bytes per key instead of ~70 for a Python set of ints, which is what keeps memory
    flat on large inputs; all operations are vectorised over arrays of keys.
    """

    MAX_LOAD = 0.7  # linear probing stays short below this; above it the table doubles

    def __init__(self, capacity: int = 1 << 16):
        cap = 1 << max(4, (capacity - 1).bit_length())
        self.table = np.zeros(cap, dtype=np.uint64)
        self.mask = _U64(cap - 1)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def contains(self, keys: np.ndarray) -> np.ndarray:
        keys = np.asarray(keys, dtype=np.uint64)
        found = np.zeros(keys.shape[0], dtype=bool)
        idx = keys & self.mask
        active = np.arange(keys.shape[0])
        while active.size:
            cur = self.table[idx[active]]
            hit = cur == keys[active]
            found[active[hit]] = True
            active = active[~hit & (cur != 0)]
            idx[active] = (idx[active] + _U64(1)) & self.mask
        return found

    def add(self, keys: np.ndarray) -> np.ndarray:
        """Insert keys; returns the ones that were new (sorted)."""
        keys = np.unique(np.asarray(keys, dtype=np.uint64))
        keys = keys[~self.contains(keys)]
        if keys.size == 0:
            return keys
        if self.size + keys.size > self.MAX_LOAD * self.table.size:
            old = self.table
            cap = old.size
            while self.size + keys.size > self.MAX_LOAD * cap:
                cap *= 2
            self.table = np.zeros(cap, dtype=np.uint64)
            self.mask = _U64(cap - 1)
            self.size = 0
            for i in range(0, old.size, 1 << 20):  # rehash in slices: no full copy of the old keys
                part = old[i:i + (1 << 20)]
                self._insert_new(part[part != 0])
            del old
        self._insert_new(keys)
        return keys

    def _insert_new(self, keys: np.ndarray) -> None:
        idx = keys & self.mask
        pending = np.arange(keys.size)
        while pending.size:
            slot = idx[pending]
            empty = np.nonzero(self.table[slot] == 0)[0]
            won = np.zeros(pending.size, dtype=bool)
            if empty.size:
                _, first = np.unique(slot[empty], return_index=True)  # one winner per free slot
                w = empty[first]
                self.table[slot[w]] = keys[pending[w]]
                won[w] = True
            pending = pending[~won]
            idx[pending] = (idx[pending] + _U64(1)) & self.mask
        self.size += keys.size


@functools.lru_cache(maxsize=32)
def lsh_params(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising false positives + false negatives
    around ``threshold`` (the area under the S-curve on the wrong side of the threshold)."""
    def area(ys: np.ndarray, width: float) -> float:
        return float(ys.mean()) * width

    xs_lo = np.linspace(0.0, threshold, 200)
    xs_hi = np.linspace(threshold, 1.0, 200)
    best, best_err = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = area(1 - (1 - xs_lo ** r) ** b, threshold)
            fn = area((1 - xs_hi ** r) ** b, 1.0 - threshold)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class MinHashLSH:
    """MinHash over character n-gram shingles, banded LSH; a document is a near duplicate when one
    of its band keys was produced by an earlier kept document."""

    def __init__(self, num_perm: int, threshold: float, ngram: int, seed: int = 1234):
        self.num_perm, self.ngram = num_perm, ngram
        self.bands, self.rows = lsh_params(num_perm, threshold)
        rng = np.random.default_rng(seed)
        self.a32 = rng.integers(1, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)  # odd: a bijection
        self.b32 = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
        self.row_coef = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | _U64(1)
        self.band_salt = rng.integers(0, 2**63, size=self.bands, dtype=np.uint64)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures, computed for the whole batch at once."""
        n = self.ngram
        # a text shorter than the shingle is one shingle, padded with NUL (never in cleaned text)
        padded = [t if len(t) >= n else t + "\x00" * (n - len(t)) for t in texts]
        cp, lens, starts = _codepoints(padded)
        hv, counts = _ngram_hashes(cp, lens, starts, n, np.arange(len(padded)))
        seg = np.cumsum(counts) - counts
        # one affine permutation a*x+b mod 2**32 per hash function over the mixed 32-bit shingle
        # hashes: uint32 arithmetic is ~4x faster than uint64 and the inputs are already random
        h32 = (hv >> _U64(32)).astype(np.uint32)
        sig = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        chunk = max(1, min(self.num_perm, 8_000_000 // max(1, h32.size)))  # bound the temporary matrix
        for j in range(0, self.num_perm, chunk):
            mat = h32[None, :] * self.a32[j:j + chunk, None]
            mat += self.b32[j:j + chunk, None]
            sig[:, j:j + chunk] = np.minimum.reduceat(mat, seg, axis=1).T
        return sig

    def band_keys(self, sig: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 keys, one per band of ``rows`` signature values."""
        x = sig[:, : self.bands * self.rows].reshape(sig.shape[0], self.bands, self.rows).astype(np.uint64)
        keys = (x * self.row_coef).sum(axis=2, dtype=np.uint64) + self.band_salt
        keys = _mix64(keys)
        keys[keys == 0] = 1
        return keys


# --------------------------------------------------------------------------- the run

OUTPUTS = {"train": "train.jsonl", "val": "val.jsonl", "sft": "sft.jsonl", "sft_val": "sft_val.jsonl",
           "rejects": "rejects.jsonl"}
KEYLOGS = {"exact": ".exact_keys.bin", "lsh": ".lsh_keys.bin"}
STATE_FILE = ".clean_state.json"
BATCH = 512
HIST_BINS = 24  # length histogram bins: [0], [1], [2,4), [4,8), ... by bit length


def _sources(cfg: CleanConfig) -> list[S.Source]:
    srcs = []
    if cfg.use_full_data or not cfg.data_files:
        srcs += S.builtin_sources(cfg.use_full_data, cfg.sft_language)
    srcs += [S.file_source(p) for p in cfg.data_files]  # raises on missing / empty / unsupported
    return srcs


def _fingerprint(cfg: CleanConfig, srcs: list[S.Source]) -> str:
    d = asdict(cfg)
    d.pop("progress", None)
    d.pop("checkpoint_every", None)
    files = [(s.path, s.fmt, os.path.getsize(s.path)) for s in srcs]
    return hashlib.sha256(json.dumps([d, files], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _new_stats(cfg: CleanConfig, srcs: list[S.Source]) -> dict:
    return {
        "records": 0,
        "kept": {"train": 0, "val": 0, "sft": 0, "sft_val": 0},
        "chars": {"train": 0, "val": 0, "sft": 0, "sft_val": 0},
        "rejected": {},
        "rejected_total": 0,
        "over_cap": 0,
        "exact_duplicates": 0,
        "near_duplicates": 0,
        "steps": {k: 0 for k in STEPS},
        "sources": {},
        "files": {},
        "length_hist": {"text": [0] * HIST_BINS, "chat": [0] * HIST_BINS},
        "input_bytes": sum(os.path.getsize(s.path) for s in srcs),
        "elapsed_s": 0.0,
        "config": asdict(cfg),
    }


def _source_stats(stats: dict, src: S.Source) -> dict:
    st = stats["sources"].get(src.name)
    if st is None:
        st = stats["sources"][src.name] = {"records": 0, "docs": 0, "chars": 0, "train": 0, "val": 0, "sft": 0,
                                           "sft_val": 0, "rejected": {}, "over_cap": 0}
    return st


class _Run:
    """State of one cleaning run: open outputs, dedup tables, counters."""

    def __init__(self, cfg: CleanConfig, out: Path, stats: dict):
        self.cfg, self.out, self.stats = cfg, out, stats
        self.cleaner = Cleaner(cfg, stats["steps"])
        self.exact = HashSet64()
        self.lsh = MinHashLSH(cfg.near_dedup_num_perm, cfg.near_dedup_threshold, cfg.near_dedup_ngram) \
            if cfg.near_dedup else None
        self.lsh_table = HashSet64()
        self.files: dict[str, Any] = {}
        self.cap = cfg.max_data_size or None

    # ---- files
    def open(self, sizes: dict[str, int] | None) -> None:
        """Open the temp outputs; on resume cut each back to its checkpointed size first."""
        names = {**{k: self.out / (v + ".partial") for k, v in OUTPUTS.items()},
                 **{k: self.out / v for k, v in KEYLOGS.items()}}
        for key, path in names.items():
            if sizes is None:
                path.write_bytes(b"")
            else:
                with open(path, "r+b" if path.exists() else "w+b") as f:
                    f.truncate(sizes.get(key, 0))
            self.files[key] = open(path, "ab", buffering=1 << 20)
        if sizes is not None:  # rebuild the dedup tables from their logs
            self.exact.add(np.fromfile(names["exact"], dtype=np.uint64))
            if self.lsh is not None:
                self.lsh_table.add(np.fromfile(names["lsh"], dtype=np.uint64))

    def sizes(self) -> dict[str, int]:
        for f in self.files.values():
            f.flush()
        return {k: f.tell() for k, f in self.files.items()}

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}

    # ---- accounting
    def reject(self, src: S.Source, line: int, reason: str, excerpt: str, detail: str = "") -> None:
        st = self.stats
        st["rejected"][reason] = st["rejected"].get(reason, 0) + 1
        st["rejected_total"] += 1
        ss = _source_stats(st, src)
        ss["rejected"][reason] = ss["rejected"].get(reason, 0) + 1
        rec = {"file": src.path, "line": line, "reason": reason, "excerpt": excerpt, "source": src.name}
        if detail:
            rec["detail"] = detail
        self.files["rejects"].write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8", "replace"))

    def full(self, kind: str) -> bool:
        if self.cap is None:
            return False
        k = self.stats["kept"]
        return (k["train"] + k["val"] if kind == "text" else k["sft"] + k["sft_val"]) >= self.cap

    def keep(self, src: S.Source, kind: str, value: Any, h: int, nchars: int) -> None:
        st = self.stats
        if kind == "text":
            split = "val" if is_val(h, self.cfg.val_fraction) else "train"
            # the C string encoder directly: json.dumps of a dict goes through slower Python layers
            line = '{"text": ' + _encode_str(value) + "}"
        else:
            split = "sft_val" if is_val(h, self.cfg.val_fraction) else "sft"
            line = json.dumps({"conversations": value}, ensure_ascii=False)
        self.files[split].write((line + "\n").encode("utf-8"))
        st["kept"][split] += 1
        st["chars"][split] += nchars
        st["length_hist"][kind][min(nchars.bit_length(), HIST_BINS - 1)] += 1
        ss = _source_stats(st, src)
        ss["docs"] += 1
        ss["chars"] += nchars
        ss[split] += 1

    # ---- one batch of records
    def process(self, batch: list[tuple[S.Source, S.Item]]) -> None:
        cfg, st, cleaner = self.cfg, self.stats, self.cleaner
        # pass 0: normalise every text and dialogue turn of the batch in one call
        raw: list[str] = []
        tagged: list[bool] = []
        for src, item in batch:
            if item.kind == "text":
                raw.append(item.value)
                tagged.append(src.pos_tagged)
            elif item.kind == "chat":
                raw += [t["content"] for t in item.value]
                tagged += [False] * len(item.value)
        normed = iter(cleaner.normalize_batch(raw, tagged))
        # pass 1: per-record results: ("reject", reason, detail), ("cap",) or (kind, value, nchars)
        results: list[tuple] = []
        src = batch[0][0]  # a batch never spans two sources
        st["records"] += len(batch)
        _source_stats(st, src)["records"] += len(batch)
        fst = st["files"].setdefault(src.path, {"records": 0, "parsed": 0})
        fst["records"] += len(batch)
        for _, item in batch:
            if item.kind == "reject":
                results.append(("reject", item.value, ""))
                continue
            fst["parsed"] += 1
            fst[item.kind] = fst.get(item.kind, 0) + 1  # which kinds this file holds (for the cap)
            if item.kind == "text":
                text = next(normed)
                if self.full("text"):
                    results.append(("cap",))
                elif not text:
                    results.append(("reject", EMPTY_AFTER_CLEAN, ""))
                elif len(text) < cfg.min_chars:
                    results.append(("reject", TOO_SHORT, f"chars={len(text)}"))
                elif len(text) > cfg.max_chars:
                    results.append(("reject", TOO_LONG, f"chars={len(text)}"))
                else:
                    results.append(("text", text, len(text)))
            else:
                turns = [{"role": t["role"], "content": next(normed)} for t in item.value]
                nchars = sum(len(t["content"]) for t in turns)
                if self.full("chat"):
                    results.append(("cap",))
                elif not all(t["content"] for t in turns):
                    results.append(("reject", EMPTY_AFTER_CLEAN, "a turn is empty after cleaning"))
                elif nchars > cfg.max_chars:
                    results.append(("reject", TOO_LONG, f"chars={nchars}"))
                else:
                    results.append(("chat", turns, nchars))
        if cfg.quality_filter:  # vectorised over the batch, applied in record order below
            idx = [i for i, r in enumerate(results) if r[0] == "text"]
            for i, (reason, detail) in zip(idx, cleaner.quality_batch([results[i][1] for i in idx])):
                if reason:
                    results[i] = ("reject", reason, detail)
        # pass 2: account in record order; survivors become dedup candidates
        cands: list[tuple[S.Source, S.Item, str, Any, int, int]] = []  # src, item, kind, value, hash, nchars
        for (src, item), r in zip(batch, results):
            if r[0] == "reject":
                self.reject(src, item.line, r[1], item.excerpt, r[2])
            elif r[0] == "cap":
                st["over_cap"] += 1
                _source_stats(st, src)["over_cap"] += 1
            elif r[0] == "text":
                cands.append((src, item, "text", r[1], text_hash(dedup_key(r[1])), r[2]))
            else:
                turns = r[1]
                key = "\x01chat\x02" + "\x02".join(t["role"] + "\x03" + dedup_key(t["content"]) for t in turns)
                cands.append((src, item, "chat", turns, text_hash(key), r[2]))
        if not cands:
            return
        hashes = np.fromiter((c[4] for c in cands), dtype=np.uint64, count=len(cands))
        dup = np.zeros(len(cands), dtype=bool)
        if cfg.exact_dedup:
            # first occurrence within the batch and not seen before == the sequential rule
            _, first = np.unique(hashes, return_index=True)
            dup[:] = True
            dup[first] = False
            dup |= self.exact.contains(hashes)
            new = self.exact.add(hashes[~dup])
            new.tofile(self.files["exact"])
        near_prev = band = None
        text_rows = [i for i, c in enumerate(cands) if c[2] == "text" and not dup[i]]
        if self.lsh is not None and text_rows:
            sig = self.lsh.signatures([dedup_key(cands[i][3]) for i in text_rows])
            band = dict(zip(text_rows, self.lsh.band_keys(sig)))
            hit = self.lsh_table.contains(np.concatenate([band[i] for i in text_rows]))
            hit = hit.reshape(len(text_rows), self.lsh.bands).any(axis=1)
            near_prev = dict(zip(text_rows, hit.tolist()))
        seen_in_batch: set[int] = set()
        kept_bands = []
        for i, (src, item, kind, value, h, nchars) in enumerate(cands):
            if dup[i]:
                st["exact_duplicates"] += 1
                self.reject(src, item.line, EXACT_DUPLICATE, item.excerpt)
                continue
            if self.full(kind):
                st["over_cap"] += 1
                _source_stats(st, src)["over_cap"] += 1
                continue
            if band is not None and kind == "text":
                keys = band[i].tolist()
                if near_prev[i] or not seen_in_batch.isdisjoint(keys):
                    st["near_duplicates"] += 1
                    self.reject(src, item.line, NEAR_DUPLICATE, item.excerpt)
                    continue
                seen_in_batch.update(keys)
                kept_bands.append(band[i])
            self.keep(src, kind, value, h, nchars)
        if kept_bands:
            self.lsh_table.add(np.concatenate(kept_bands)).tofile(self.files["lsh"])


def _check_file(stats: dict, src: S.Source) -> None:
    """Stop the run on a user file that gave nothing usable."""
    fst = stats["files"].get(src.path, {"records": 0, "parsed": 0})
    if fst["records"] == 0:
        raise ValueError(f"{src.path}: no records found; expected {src.fmt} records (is the file blank?)")
    if fst["parsed"] == 0:
        reasons = stats["sources"].get(src.name, {}).get("rejected", {})
        raise ValueError(
            f"{src.path}: none of its {fst['records']} records is valid (reasons: {reasons}); expected "
            + ("JSON objects with a 'text' string or a 'conversations' list, one per line" if src.fmt == "jsonl"
               else f"valid UTF-8 {src.fmt} records")
            + f"; see {OUTPUTS['rejects']} for line numbers"
        )


def _finalize(out: Path, stats: dict, state: dict) -> dict:
    state["phase"] = "finalizing"
    atomic_write_text(out / STATE_FILE, json.dumps(state))
    for v in OUTPUTS.values():
        part = out / (v + ".partial")
        if part.exists():
            os.replace(part, out / v)
    st = stats
    st["kept_total"] = sum(st["kept"].values())
    st["mb_per_s"] = round(st["input_bytes"] / 1e6 / max(st["elapsed_s"], 1e-9), 2)
    st["reasons"] = [r for r in REASONS if r in st["rejected"]] + sorted(set(st["rejected"]) - set(REASONS))
    atomic_write_text(out / "stats.json", json.dumps(st, ensure_ascii=False, indent=1))
    state["phase"] = "done"
    state["stats"] = None
    atomic_write_text(out / STATE_FILE, json.dumps(state))
    for v in KEYLOGS.values():
        if (out / v).exists():
            os.unlink(out / v)
    return st


def run_cleaning(cfg: CleanConfig, out_dir: str | Path, resume: bool = True) -> dict:
    """Clean every source into ``out_dir``; returns the stats dict (also written to stats.json).

    With ``resume`` (the default) a run interrupted earlier with the same config and inputs
    continues from its last checkpoint, and a run already complete is not redone.
    """
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    srcs = _sources(cfg)
    fp = _fingerprint(cfg, srcs)
    state_path = out / STATE_FILE
    state = None
    if resume and state_path.exists():
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except ValueError:
            logger.warning("%s is unreadable; starting the cleaning run afresh", state_path)
        if state is not None and state.get("fingerprint") != fp:
            logger.info("config or inputs changed since the last run in %s; starting afresh", out)
            state = None
    if state is not None and state.get("phase") == "done" and (out / "stats.json").exists() \
            and all((out / v).exists() for v in OUTPUTS.values()):
        logger.info("%s is already complete; returning its stats (resume=False to redo)", out)
        return json.loads((out / "stats.json").read_text(encoding="utf-8"))
    if state is not None and state.get("phase") == "finalizing":
        return _finalize(out, state["stats"], state)
    if state is not None and state.get("phase") != "running":
        state = None

    if state is None:
        stats = _new_stats(cfg, srcs)
        state = {"version": 1, "fingerprint": fp, "phase": "running", "source": 0, "pos": 0, "line": 0}
        sizes = None
    else:
        stats = state["stats"]
        sizes = state["sizes"]
        logger.info("resuming %s at source %d, line %d", out, state["source"], state["line"])
    run = _Run(cfg, out, stats)
    run.open(sizes)
    t0 = time.perf_counter()
    elapsed0 = stats["elapsed_s"]

    def checkpoint(source: int, pos: int, line: int) -> None:
        stats["elapsed_s"] = elapsed0 + time.perf_counter() - t0
        state.update(source=source, pos=pos, line=line, sizes=run.sizes(), stats=stats)
        atomic_write_text(state_path, json.dumps(state, ensure_ascii=False))

    from tqdm.auto import tqdm

    bar = tqdm(total=stats["input_bytes"], unit="B", unit_scale=True, desc="cleaning", disable=not cfg.progress)
    try:
        for si in range(state["source"], len(srcs)):
            src = srcs[si]
            kinds = [src.kind] if src.kind else ["text", "chat"]
            start_pos, start_line = (state["pos"], state["line"]) if si == state["source"] else (0, 0)
            if all(run.full(k) for k in kinds):
                logger.info("max_data_size reached; skipping %s", src.path)
                continue
            logger.info("reading %s (%s)", src.path, src.name)
            batch: list[tuple[S.Source, S.Item]] = []
            since = 0
            last = None
            by_bytes = src.fmt in ("jsonl", "lines", "txt")  # there ``pos`` is a byte offset
            done = start_pos if by_bytes else 0
            for item in S.iter_source(src, text_column=cfg.text_column, max_line_bytes=cfg.max_line_bytes,
                                      start_pos=start_pos, start_line=start_line, counters=stats["steps"]):
                batch.append((src, item))
                if len(batch) >= BATCH:
                    run.process(batch)
                    since += len(batch)
                    last = batch[-1][1]
                    batch = []
                    if by_bytes:
                        bar.update(last.pos - done)
                        done = last.pos
                    if since >= cfg.checkpoint_every:
                        checkpoint(si, last.pos, last.line)
                        since = 0
                    # a file of unknown kind stops once every kind it has produced so far is full
                    seen = kinds if src.kind else [k for k in kinds if stats["files"][src.path].get(k)]
                    if seen and all(run.full(k) for k in seen):
                        logger.info("max_data_size reached; stopping %s at line %d", src.path, last.line)
                        break
            if batch:
                run.process(batch)
            if src.name == src.path:  # a user file: must have given something usable
                _check_file(stats, src)
            bar.update(max(0, os.path.getsize(src.path) - done))
            checkpoint(si + 1, 0, 0)
        stats["elapsed_s"] = elapsed0 + time.perf_counter() - t0
        run.close()
        state["stats"] = stats
        result = _finalize(out, stats, state)
    finally:
        bar.close()
        run.close()
    logger.info("cleaning done: %s kept, %s rejected, %.1f s", result["kept"], result["rejected_total"],
                result["elapsed_s"])
    return result


# --------------------------------------------------------------------------- display


def stats_table(stats: dict) -> "pandas.DataFrame":
    """One row per source: records, kept docs and chars, split counts, then rejects by reason."""
    import pandas as pd

    rows = []
    for name, s in stats["sources"].items():
        row = {"source": name, "records": s["records"], "docs": s["docs"], "chars": s["chars"],
               "train": s["train"], "val": s["val"], "sft": s["sft"], "sft_val": s["sft_val"],
               "over_cap": s.get("over_cap", 0)}
        row.update({r: s["rejected"].get(r, 0) for r in stats.get("reasons", sorted(stats["rejected"]))})
        rows.append(row)
    df = pd.DataFrame(rows).set_index("source") if rows else pd.DataFrame()
    if rows:
        df.loc["total"] = df.sum(numeric_only=True)
    return df


def example_rejects(out_dir: str | Path, per_reason: int = 10) -> "pandas.DataFrame":
    """Up to ``per_reason`` rejected records of each reason, read from rejects.jsonl."""
    import pandas as pd

    out = Path(out_dir)
    path = out / OUTPUTS["rejects"]
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run run_cleaning first")
    wanted = None
    if (out / "stats.json").exists():
        wanted = set(json.loads((out / "stats.json").read_text(encoding="utf-8"))["rejected"])
    picked: dict[str, list[dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            lst = picked.setdefault(rec["reason"], [])
            if len(lst) < per_reason:
                lst.append(rec)
            if wanted is not None and len(picked) == len(wanted) and all(len(v) >= per_reason for v in picked.values()):
                break
    order = {r: i for i, r in enumerate(REASONS)}
    rows = [r for reason in sorted(picked, key=lambda r: order.get(r, len(order))) for r in picked[reason]]
    cols = ["reason", "file", "line", "excerpt", "detail"]
    return pd.DataFrame(rows).reindex(columns=cols).fillna("")


def plot_clean_stats(stats: dict, out_dir: str | Path, show: bool = True) -> list[Path]:
    """Docs/chars per source, length histogram, rejects by reason. Saved as PNGs under
    ``out_dir/plots/``; shown inline when running in a notebook and ``show``."""
    if show:
        try:
            from IPython import get_ipython
            from IPython.display import display
            show = get_ipython() is not None
        except ImportError:
            show = False
    import matplotlib.pyplot as plt

    plots = Path(out_dir) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        p = plots / name
        fig.savefig(p, dpi=100)
        if show:
            display(fig)
        plt.close(fig)
        paths.append(p)

    names = list(stats["sources"])
    fig, axes = plt.subplots(1, 2, figsize=(11, max(2.5, 0.45 * len(names) + 1)))
    axes[0].barh(names, [stats["sources"][n]["docs"] for n in names], color="tab:blue")
    axes[0].set_title("documents kept per source")
    axes[1].barh(names, [stats["sources"][n]["chars"] for n in names], color="tab:green")
    axes[1].set_title("characters kept per source")
    for ax in axes:
        ax.invert_yaxis()
    save(fig, "sources.png")

    fig, ax = plt.subplots(figsize=(8, 3.5))
    text_h, chat_h = stats["length_hist"]["text"], stats["length_hist"]["chat"]
    used = [i for i in range(HIST_BINS) if text_h[i] or chat_h[i]]
    lo, hi = (used[0], used[-1] + 1) if used else (0, 1)  # only the bins that hold something
    labels = ["0"] + [f"{1 << (i - 1)}" for i in range(1, HIST_BINS)]
    x = np.arange(lo, hi)
    ax.bar(x - 0.2, text_h[lo:hi], width=0.4, label="pretrain documents")
    ax.bar(x + 0.2, chat_h[lo:hi], width=0.4, label="SFT dialogues")
    ax.set_xticks(x, labels[lo:hi], rotation=45)
    ax.set_xlabel("characters (bin starts at; log2 bins)")
    ax.set_ylabel("count")
    ax.set_yscale("symlog")
    ax.legend()
    ax.set_title("length histogram of kept data")
    save(fig, "lengths.png")

    reasons = stats.get("reasons") or sorted(stats["rejected"])
    counts = [stats["rejected"][r] for r in reasons]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * len(reasons) + 1)))
    colors = ["tab:orange" if r in (EXACT_DUPLICATE, NEAR_DUPLICATE) else "tab:red" for r in reasons]
    ax.barh(reasons, counts, color=colors)
    ax.invert_yaxis()
    ax.set_xscale("symlog")
    ax.set_title(f"rejected by reason (orange: duplicates removed, exact {stats['exact_duplicates']}, "
                 f"near {stats['near_duplicates']})", fontsize=9)
    for i, c in enumerate(counts):
        ax.text(c, i, f" {c}", va="center", fontsize=8)
    save(fig, "rejects.png")
    return paths


# --------------------------------------------------------------------------- benchmark


def write_synthetic_jsonl(path: str | Path, n_mb: float, seed: int = 0) -> int:
    """Pretrain JSONL of about ``n_mb`` MB built from the built-in review sentences: unique
    documents (a serial number keeps them apart), plus ~3% exact and ~3% near duplicates and
    ~1% junk lines. Returns the number of lines written."""
    rng = random.Random(seed)
    sentences = []
    for p in S.review_paths():
        with open(p, encoding="utf-8") as f:
            sentences += [ln.strip() for ln in f if len(ln.strip()) > 5]
    target = int(n_mb * 1e6)
    written, n = 0, 0
    recent: list[str] = []
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            r = rng.random()
            if r < 0.03 and recent:
                doc = rng.choice(recent)
            elif r < 0.06 and recent:
                d = list(rng.choice(recent))
                for _ in range(max(1, len(d) // 50)):
                    d[rng.randrange(len(d))] = rng.choice("的了是在我有他这")
                doc = "".join(d)
            elif r < 0.07:
                doc = "#" * rng.randrange(20, 80) if rng.random() < 0.5 else None
            else:
                doc = "\n".join(rng.choice(sentences) for _ in range(rng.randint(1, 3))) + f" (编号{n})"
            if doc is None:
                line = '{"text": broken json'
            else:
                line = json.dumps({"text": doc}, ensure_ascii=False)
                if len(recent) < 1000:
                    recent.append(doc)
                else:
                    recent[rng.randrange(1000)] = doc
            f.write(line + "\n")
            written += len(line.encode("utf-8")) + 1
            n += 1
    return n


def bench_clean(n_mb: float = 20, near_dedup: bool = False) -> dict:
    """Throughput of run_cleaning on ``n_mb`` MB of synthetic Chinese JSONL (one process, one core)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bench.jsonl"
        lines = write_synthetic_jsonl(src, n_mb)
        size = src.stat().st_size
        cfg = CleanConfig(data_files=[str(src)], near_dedup=near_dedup, progress=False)
        _tables()  # one-time set-up (~50 ms), not throughput
        t0, c0 = time.perf_counter(), time.process_time()
        stats = run_cleaning(cfg, Path(tmp) / "out", resume=False)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "mb": round(size / 1e6, 2),
        "lines": lines,
        "seconds": round(dt, 3),
        "mb_per_s": round(size / 1e6 / dt, 2),
        # CPU time of this process: the one-core rate even when other work shares the machine
        "cpu_seconds": round(cpu, 3),
        "mb_per_cpu_s": round(size / 1e6 / max(cpu, 1e-9), 2),
        "docs_per_s": round(lines / dt),
        "near_dedup": near_dedup,
        "kept": stats["kept"]["train"] + stats["kept"]["val"],
        "exact_duplicates": stats["exact_duplicates"],
        "near_duplicates": stats["near_duplicates"],
    }
