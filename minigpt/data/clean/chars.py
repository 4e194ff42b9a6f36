"""A batch of texts as numpy arrays: code points, character classes, CJK flags, n-gram hashes.

The quality filters and MinHash look at every character of a batch at once through these arrays
instead of looping over characters in Python.
"""

from __future__ import annotations

import numpy as np

U64 = np.uint64

# punctuation that ordinary prose uses (ASCII, general, CJK, full-width, bullets such as ● and the
# ○ used as a zero in 二○○○年, the ~ of informal Chinese); any other non-letter, non-digit,
# non-space character counts as a "symbol" for the quality filter
_PUNCT_CHARS = "!\"'(),-.:;?%/~\u00b7" + "".join(
    chr(c) for lo, hi in [(0x2010, 0x2027), (0x2030, 0x205E), (0x25A0, 0x25FF), (0x2605, 0x2606), (0x3000, 0x303F),
                          (0xFF01, 0xFF65), (0xFE30, 0xFE4F)] for c in range(lo, hi + 1))
_CJK_RANGES = [(0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF),
               (0x20000, 0x2FFFF)]
SPACE, WORD, PUNCT, SYMBOL = 0, 1, 2, 3  # character classes
_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def char_class(ch: str) -> int:
    """SPACE, WORD (a letter or digit of any script), PUNCT or SYMBOL."""
    if ch.isspace():
        return SPACE
    if ch.isalnum():  # letters and digits of every script, CJK included
        return WORD
    return PUNCT if ch in _PUNCT_CHARS else SYMBOL


def is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def class_tables() -> tuple[np.ndarray, np.ndarray]:
    """Character class and CJK flag for every BMP code point (built once), so a whole batch of
    documents is classified with one numpy lookup instead of a Python loop over characters."""
    global _TABLES
    if _TABLES is None:
        cls = np.fromiter((char_class(chr(c)) for c in range(0x10000)), dtype=np.uint8, count=0x10000)
        cls[0xD800:0xE000] = SYMBOL
        cjk = np.zeros(0x10000, dtype=bool)
        for lo, hi in _CJK_RANGES:
            if lo < 0x10000:
                cjk[lo:hi + 1] = True
        _TABLES = (cls, cjk)
    return _TABLES


def codepoints(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(code points of all texts concatenated, lengths, start offsets)."""
    lens = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cp = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    return cp, lens, np.cumsum(lens) - lens


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic): spreads the bits of a weak hash."""
    x = x ^ (x >> U64(30))
    x = x * U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> U64(27))
    x = x * U64(0x94D049BB133111EB)
    return x ^ (x >> U64(31))


HASH_BASE = 1_000_003


def window_hashes(c: np.ndarray, n: int) -> np.ndarray:
    """Polynomial hash sum(c[i+k] * HASH_BASE**(n-1-k)) mod 2**64 of every window of n values of ``c``.

    Built by doubling (a window of a+b values is the one of a values times HASH_BASE**b plus the one of b
    values a places on): about 2 log2(n) passes over the array instead of n.
    """
    result, rlen = None, 0  # hashes of the windows of rlen values built so far
    part, plen = c, 1  # hashes of the windows of plen values (plen a power of two)
    bits = n
    while True:
        if bits & 1:
            if result is None:
                result, rlen = part, plen
            else:
                m = c.size - rlen - plen + 1
                result = result[:m] * U64(pow(HASH_BASE, plen, 1 << 64)) + part[rlen:rlen + m]
                rlen += plen
        bits >>= 1
        if not bits:
            return result
        m = c.size - 2 * plen + 1
        part = part[:m] * U64(pow(HASH_BASE, plen, 1 << 64)) + part[plen:plen + m]
        plen *= 2


def ngram_hashes(cp: np.ndarray, lens: np.ndarray, starts: np.ndarray, n: int,
                 docs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mixed 64-bit hashes of every character n-gram of the selected docs (each doc must have
    len >= n), and the number of n-grams per selected doc. Polynomial hash, wrapping mod 2**64."""
    if cp.size - n + 1 <= 0:
        return np.zeros(0, np.uint64), np.zeros(len(docs), np.int64)
    h = window_hashes(cp.astype(np.uint64), n)
    counts = lens[docs] - n + 1
    seg = np.cumsum(counts) - counts
    pos = np.repeat(starts[docs] - seg, counts) + np.arange(int(counts.sum()))
    return mix64(h[pos]), counts
