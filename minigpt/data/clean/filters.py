"""Which cleaned documents are rejected, and why: length limits and the quality filters.

The quality filters (Gopher / C4 style, adapted to characters because Chinese has no spaces) are
one ordered table, ``QUALITY_RULES``: (reason, CleanConfig field holding the limit, check). A
document gets the reason of the first row whose check fails. Adding a filter is one row here plus
one CleanConfig field; the per-document measures the checks read are computed for the whole batch
at once with numpy (``measure_batch``).
"""

from __future__ import annotations

import functools
import re
from typing import Callable, NamedTuple

import numpy as np

from .chars import SPACE, SYMBOL, U64, WORD, char_class, class_tables, codepoints, is_cjk, ngram_hashes
from .config import CleanConfig
from .reasons import (
    DUPLICATE_LINES, DUPLICATE_NGRAMS, EMPTY_AFTER_CLEAN, HIGH_SYMBOL_FRACTION, LOW_CJK_FRACTION,
    LOW_LETTER_FRACTION, REPEATED_CHAR_RUN, TOO_LONG, TOO_SHORT,
)

PASS = ("", "")  # (reason, detail) of a document that no rule rejects


# --------------------------------------------------------------------------- length limits


def check_text_length(text: str, cfg: CleanConfig) -> tuple[str, str]:
    """(reason, detail) for a cleaned pretrain document outside [min_chars, max_chars], else PASS."""
    if not text:
        return EMPTY_AFTER_CLEAN, ""
    if len(text) < cfg.min_chars:
        return TOO_SHORT, f"chars={len(text)}"
    if len(text) > cfg.max_chars:
        return TOO_LONG, f"chars={len(text)}"
    return PASS


def check_chat_length(turns: list[dict], nchars: int, cfg: CleanConfig) -> tuple[str, str]:
    """(reason, detail) for a cleaned dialogue with an empty turn or over max_chars in all, else PASS."""
    if not all(t["content"] for t in turns):
        return EMPTY_AFTER_CLEAN, "a turn is empty after cleaning"
    if nchars > cfg.max_chars:
        return TOO_LONG, f"chars={nchars}"
    return PASS


# --------------------------------------------------------------------------- quality rules


class Doc(NamedTuple):
    """One document and its measures, as the quality checks see it."""

    text: str
    nonspace: int  # characters that are not whitespace
    letter_frac: float  # letters + digits among non-space characters
    symbol_frac: float  # symbols (neither letters, digits nor punctuation) among non-space characters
    cjk_frac: float  # CJK characters among non-space characters (0.0 unless min_cjk_fraction is on)
    max_run: int  # longest run of one repeated non-space character
    dup_ngram_frac: float  # share of repeated character n-grams
    ngram: int  # the n of those n-grams (dup_ngram_size)


# check(doc, limit) -> the reject detail when the document fails, None when it passes
Check = Callable[[Doc, float], "str | None"]


def _empty(d: Doc, _limit: object) -> str | None:
    return "" if d.nonspace == 0 else None


def _low_letters(d: Doc, limit: float) -> str | None:
    return f"letter_fraction={d.letter_frac:.2f}" if d.letter_frac < limit else None


def _many_symbols(d: Doc, limit: float) -> str | None:
    return f"symbol_fraction={d.symbol_frac:.2f}" if d.symbol_frac > limit else None


def _low_cjk(d: Doc, limit: float) -> str | None:
    return f"cjk_fraction={d.cjk_frac:.2f}" if limit > 0 and d.cjk_frac < limit else None


def _repeated_run(d: Doc, limit: int) -> str | None:
    if d.max_run <= limit:
        return None
    m = _char_run_re(limit).search(d.text)
    return f"{m.group(1)!r} x{m.end() - m.start()}" if m else f"run={d.max_run}"


def _duplicate_lines(d: Doc, limit: float) -> str | None:
    if "\n" not in d.text:
        return None
    frac = _dup_line_fraction(d.text)
    return f"dup_line_fraction={frac:.2f}" if frac > limit else None


def _duplicate_ngrams(d: Doc, limit: float) -> str | None:
    return f"dup_{d.ngram}gram_fraction={d.dup_ngram_frac:.2f}" if d.dup_ngram_frac > limit else None


# (reason, CleanConfig field with the limit or None, check), checked top to bottom
QUALITY_RULES: list[tuple[str, str | None, Check]] = [
    (EMPTY_AFTER_CLEAN, None, _empty),
    (LOW_LETTER_FRACTION, "min_letter_fraction", _low_letters),
    (HIGH_SYMBOL_FRACTION, "max_symbol_fraction", _many_symbols),
    (LOW_CJK_FRACTION, "min_cjk_fraction", _low_cjk),  # 0 = off
    (REPEATED_CHAR_RUN, "max_char_run", _repeated_run),
    (DUPLICATE_LINES, "max_dup_line_fraction", _duplicate_lines),
    (DUPLICATE_NGRAMS, "max_dup_ngram_fraction", _duplicate_ngrams),
]


def quality_batch(texts: list[str], cfg: CleanConfig) -> list[tuple[str, str]]:
    """(reason, detail) per non-empty cleaned document: the first QUALITY_RULES row it fails, else PASS."""
    rules = [(reason, getattr(cfg, name) if name else None, check) for reason, name, check in QUALITY_RULES]
    out = []
    for doc in measure_batch(texts, cfg):
        verdict = PASS
        for reason, limit, check in rules:
            detail = check(doc, limit)
            if detail is not None:
                verdict = (reason, detail)
                break
        out.append(verdict)
    return out


# --------------------------------------------------------------------------- measures


def measure_batch(texts: list[str], cfg: CleanConfig) -> list[Doc]:
    """The measures of every document of a batch, vectorised over all their characters."""
    if not texts:
        return []
    cp, lens, starts = codepoints(texts)
    cls, bmp, astral = _classes(cp)
    ndoc = len(texts)
    doc = np.repeat(np.arange(ndoc), lens)
    counts = np.bincount(doc * 4 + cls, minlength=ndoc * 4).reshape(ndoc, 4)
    nonspace = lens - counts[:, SPACE]
    safe = np.maximum(nonspace, 1)
    if cfg.min_cjk_fraction > 0:
        cjk_frac = (_cjk_counts(cp, bmp, astral, doc, ndoc) / safe).tolist()
    else:
        cjk_frac = [0.0] * ndoc
    max_run = _longest_runs(cp, cls, doc, starts)
    dup_frac = _dup_ngram_fractions(cp, lens, starts, cfg.dup_ngram_size)
    # plain Python numbers: indexing numpy arrays element by element is slow
    columns = zip(texts, nonspace.tolist(), (counts[:, WORD] / safe).tolist(), (counts[:, SYMBOL] / safe).tolist(),
                  cjk_frac, max_run.tolist(), dup_frac.tolist())
    return [Doc(*c, cfg.dup_ngram_size) for c in columns]


def _classes(cp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(class of every character, code points clipped to the BMP, positions of astral characters)."""
    bmp = np.minimum(cp, 0xFFFF)
    cls = class_tables()[0][bmp]
    astral = np.nonzero(cp > 0xFFFF)[0]
    if astral.size:  # rare: classify the few characters outside the BMP one by one
        cls[astral] = [char_class(chr(int(c))) for c in cp[astral]]
    return cls, bmp, astral


def _cjk_counts(cp: np.ndarray, bmp: np.ndarray, astral: np.ndarray, doc: np.ndarray, ndoc: int) -> np.ndarray:
    cjk = class_tables()[1][bmp]
    if astral.size:
        cjk[astral] = [is_cjk(int(c)) for c in cp[astral]]
    return np.bincount(doc, weights=cjk, minlength=ndoc)


def _longest_runs(cp: np.ndarray, cls: np.ndarray, doc: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Longest run of one repeated non-space character, per document."""
    same = np.zeros(cp.size, dtype=bool)
    same[1:] = (cp[1:] == cp[:-1]) & (doc[1:] == doc[:-1]) & (cls[1:] != SPACE)
    csum = np.cumsum(same)
    run = csum - np.maximum.accumulate(np.where(same, 0, csum))  # equal neighbours so far
    return np.maximum.reduceat(run, starts) + 1


def _dup_ngram_fractions(cp: np.ndarray, lens: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """Share of repeated character n-grams, per document long enough to repeat one (else 0)."""
    dup_frac = np.zeros(lens.size)
    long_docs = np.nonzero(lens - n + 1 > n)[0]
    if long_docs.size:
        hv, grams = ngram_hashes(cp, lens, starts, n, long_docs)
        # owner in the top 24 bits, 40 bits of hash below: one plain sort finds the distinct
        # n-grams of every document at once (np.unique with return_index is a slower stable sort)
        owner = np.repeat(np.arange(long_docs.size, dtype=np.uint64), grams)
        key = np.sort((owner << U64(40)) | (hv >> U64(24)))
        first = np.ones(key.size, dtype=bool)
        first[1:] = key[1:] != key[:-1]
        uniq = np.bincount((key[first] >> U64(40)).astype(np.int64), minlength=long_docs.size)
        dup_frac[long_docs] = 1.0 - uniq / grams
    return dup_frac


@functools.lru_cache(maxsize=8)
def _char_run_re(max_run: int) -> re.Pattern:
    return re.compile(r"(\S)\1{%d,}" % max_run)


def _dup_line_fraction(s: str) -> float:
    lines = [ln for ln in s.split("\n") if ln]
    return 1.0 - len(set(lines)) / len(lines) if len(lines) > 1 else 0.0
