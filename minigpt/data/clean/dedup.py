"""Duplicate detection: dedup keys and hashes, a compact hash set, MinHash with banded LSH.

Exact dedup compares a 64-bit hash of the document's dedup key. Near dedup looks up the LSH bands of
the MinHash signature (many short bands: a high-recall candidate search, ``lsh_verified_params``) and
accepts a candidate only when the Jaccard similarity estimated from the two signatures is above the
threshold (``MinHashLSH.similarity``; see ``near.NearDedup``). The same hash also picks the train/val side
of a document.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from .chars import U64, codepoints, mix64, ngram_hashes


def dedup_key(text: str) -> str:
    """The normalised form that exact dedup and the split hash: case-folded, whitespace removed."""
    return "".join(text.lower().split())


def chat_dedup_key(turns: list[dict]) -> str:
    """Dedup key of a dialogue: roles and the dedup keys of the turns, with separators no text has."""
    return "\x01chat\x02" + "\x02".join(t["role"] + "\x03" + dedup_key(t["content"]) for t in turns)


def text_hash(key: str) -> int:
    """Stable 64-bit hash (never 0: 0 marks an empty slot in the hash table)."""
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
    return h or 1


def is_val(h: int, val_fraction: float) -> bool:
    """Train/val by hash: a document's side depends only on its own text, so adding data never moves it."""
    return (h >> 11) / float(1 << 53) < val_fraction


class HashSet64:
    """A set of non-zero uint64 keys in one numpy array (open addressing, linear probing), optionally
    with a uint64 value per key (where the key was first seen, to name it in a reject).

    ~12-23 bytes per key (twice that with values) instead of ~70 for a Python set of ints, which is
    what keeps memory flat on large inputs; all operations are vectorised over arrays of keys.
    """

    MAX_LOAD = 0.7  # linear probing stays short below this; above it the table doubles

    def __init__(self, capacity: int = 1 << 16, values: bool = False):
        cap = 1 << max(4, (capacity - 1).bit_length())
        self.table = np.zeros(cap, dtype=np.uint64)
        self.values = np.zeros(cap, dtype=np.uint64) if values else None
        self.mask = U64(cap - 1)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _find(self, keys: np.ndarray) -> np.ndarray:
        """The slot of each key, -1 where it is absent."""
        keys = np.asarray(keys, dtype=np.uint64)
        slot = np.full(keys.shape[0], -1, dtype=np.int64)
        idx = keys & self.mask
        active = np.arange(keys.shape[0])
        while active.size:
            cur = self.table[idx[active]]
            hit = cur == keys[active]
            slot[active[hit]] = idx[active[hit]].astype(np.int64)
            active = active[~hit & (cur != 0)]
            idx[active] = (idx[active] + U64(1)) & self.mask
        return slot

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """A bool per key: is it in the set."""
        return self._find(keys) >= 0

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value stored with each key (0 where absent or where the set keeps no values)."""
        slot = self._find(keys)
        out = np.zeros(slot.shape[0], dtype=np.uint64)
        if self.values is not None:
            out[slot >= 0] = self.values[slot[slot >= 0]]
        return out

    def add(self, keys: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        """Insert keys (with their values: the first one given for a key wins); returns the ones that
        were new (sorted); ``last_added_values`` holds their values in the same order."""
        keys = np.asarray(keys, dtype=np.uint64)
        vals = np.zeros(keys.shape[0], dtype=np.uint64) if values is None else np.asarray(values, dtype=np.uint64)
        keys, first = np.unique(keys, return_index=True)
        vals = vals[first]
        new = ~self.contains(keys)
        keys, vals = keys[new], vals[new]
        self.last_added_values = vals
        if keys.size == 0:
            return keys
        if self.size + keys.size > self.MAX_LOAD * self.table.size:
            self._grow(self.size + keys.size)
        self._insert_new(keys, vals)
        return keys

    def _grow(self, need: int) -> None:
        old, old_vals = self.table, self.values
        cap = old.size
        while need > self.MAX_LOAD * cap:
            cap *= 2
        self.table = np.zeros(cap, dtype=np.uint64)
        self.values = None if old_vals is None else np.zeros(cap, dtype=np.uint64)
        self.mask = U64(cap - 1)
        self.size = 0
        for i in range(0, old.size, 1 << 20):  # rehash in slices: no full copy of the old keys
            part = old[i:i + (1 << 20)]
            used = part != 0
            self._insert_new(part[used], None if old_vals is None else old_vals[i:i + (1 << 20)][used])
        del old, old_vals

    def _insert_new(self, keys: np.ndarray, vals: np.ndarray | None) -> None:
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
                if self.values is not None and vals is not None:
                    self.values[slot[w]] = vals[pending[w]]
                won[w] = True
            pending = pending[~won]
            idx[pending] = (idx[pending] + U64(1)) & self.mask
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


def verify_margin(num_perm: int, threshold: float) -> float:
    """Two standard deviations of a MinHash Jaccard estimate at ``threshold``: a pair truly at the threshold
    passes verification at ``threshold - margin`` ~98% of the time."""
    return 2.0 * float(np.sqrt(threshold * (1.0 - threshold) / num_perm))


@functools.lru_cache(maxsize=32)
def lsh_verified_params(num_perm: int, threshold: float, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows) for LSH followed by verification: the fewest bands (memory: one table entry per band
    per kept document) that make a pair at the verification bar ``threshold - verify_margin`` a candidate
    with probability >= ``recall``, preferring 4 rows per band (fewer chance candidates) over 3, 2, 1."""
    t = threshold - verify_margin(num_perm, threshold)
    for r in (4, 3, 2, 1):
        for b in range(1, num_perm // r + 1):
            if 1.0 - (1.0 - t ** r) ** b >= recall:
                return b, r
    return num_perm, 1


def shingles(text: str, n: int) -> set[str]:
    """The character n-grams of a text as MinHash takes them (a text shorter than n: one, padded with NUL)."""
    if len(text) < n:
        text = text + "\x00" * (n - len(text))
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def exact_jaccard(a: str, b: str, ngram: int) -> float:
    """The Jaccard similarity that MinHash estimates for two dedup keys: each key's shingle size comes from its
    own length (``shingle_size``), and keys of different sizes share no shingle."""
    n = shingle_size(len(a), ngram)
    if n != shingle_size(len(b), ngram):
        return 0.0
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / len(sa | sb)


def shingle_size(length: int, ngram: int) -> int:
    """Characters per shingle for a text of ``length`` characters: ``ngram`` from 16*ngram characters on,
    less for shorter texts (one per 16 characters, at least 2). A one-character edit changes up to n of
    a text's shingles, so with 5-grams a 31-character sentence edited once keeps a Jaccard similarity
    of only ~0.7 (below the 0.8 threshold); with the 2-grams it gets here it keeps ~0.88."""
    return max(2, min(ngram, length // 16)) if ngram > 2 else ngram


class MinHashLSH:
    """MinHash over character n-gram shingles, banded LSH for candidates, one-byte sketches of the signature
    for verification (b-bit MinHash, Li and König 2010: the low 8 bits of each value). Shorter documents get shorter shingles
    (``shingle_size``), each size hashed apart, so a small edit of a short text is still caught; an edit
    that moves a text across a size boundary (a multiple of 16 characters) is not."""

    def __init__(self, num_perm: int, threshold: float, ngram: int, seed: int = 1234):
        self.num_perm, self.ngram = num_perm, ngram
        self.threshold = threshold
        self.bands, self.rows = lsh_verified_params(num_perm, threshold)
        self.accept = threshold - verify_margin(num_perm, threshold)  # the verification bar
        rng = np.random.default_rng(seed)
        self.a32 = rng.integers(1, 2**32, size=num_perm, dtype=np.uint32) | np.uint32(1)  # odd: a bijection
        self.b32 = rng.integers(0, 2**32, size=num_perm, dtype=np.uint32)
        self.row_coef = rng.integers(1, 2**63, size=self.rows, dtype=np.uint64) | U64(1)
        self.band_salt = rng.integers(0, 2**63, size=self.bands, dtype=np.uint64)

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures, computed for the whole batch at once."""
        sizes = np.fromiter((shingle_size(len(t), self.ngram) for t in texts), dtype=np.int64, count=len(texts))
        # a text shorter than its shingle is one shingle, padded with NUL (never in cleaned text)
        padded = [t if len(t) >= n else t + "\x00" * (n - len(t)) for t, n in zip(texts, sizes.tolist())]
        cp, lens, starts = codepoints(padded)
        sig = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        for n in np.unique(sizes).tolist():
            docs = np.nonzero(sizes == n)[0]
            hv, counts = ngram_hashes(cp, lens, starts, n, docs)
            hv = mix64(hv ^ U64(n))  # shingles of different sizes hash apart
            sig[docs] = self._minhash(hv, counts)
        return sig

    def _minhash(self, hv: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(docs, num_perm) minima over each doc's run of shingle hashes."""
        seg = np.cumsum(counts) - counts
        # one affine permutation a*x+b mod 2**32 per hash function over the mixed 32-bit shingle
        # hashes: uint32 arithmetic is faster than uint64 and the inputs are already random
        h32 = (hv >> U64(32)).astype(np.uint32)
        sig = np.empty((len(counts), self.num_perm), dtype=np.uint32)
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
        keys = mix64(keys)
        keys[keys == 0] = 1
        return keys

    @staticmethod
    def sketch(sig: np.ndarray) -> np.ndarray:
        """(n, num_perm) uint8: the low byte of each MinHash value, what verification compares."""
        return (sig & np.uint32(0xFF)).astype(np.uint8)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Estimated Jaccard similarity of sketch rows ``a`` and ``b`` (broadcast over leading axes): the share
        of equal bytes, less the 1/256 chance that two different values share their low byte."""
        m = (a == b).mean(axis=-1)
        return (m - 1.0 / 256) / (1.0 - 1.0 / 256)
