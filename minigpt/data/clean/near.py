"""Near-duplicate state of a cleaning run: LSH candidates, verified against the kept documents' sketches, or
exactly for short documents.

Per kept document it holds one table entry per LSH band (band key -> document number), a one-byte-per-value
sketch of its MinHash signature (``num_perm`` bytes) and where it was read (8 bytes). With the defaults
(128 values, 14 bands of 4 rows at threshold 0.8) that is ~14 x 23-46 + 128 + 8 bytes, about 0.5-0.8 KB per
kept document: ~0.5-0.7 GB for the million documents of a gigabyte of text.

A short document has few shingles, so its MinHash estimate is the least reliable exactly where chance overlaps
are most common (two short reviews sharing a line). Dedup keys of at most ``EXACT_MAX_CHARS`` characters are
therefore also kept as text (up to ~0.3-0.8 KB more per short document) and a candidate pair of two of them is
compared exactly: a near duplicate when the shingle Jaccard similarity reaches the threshold itself, where an
estimated pair must reach the threshold less two standard deviations of the estimate. Append-only logs hold
every row, so a resumed run rebuilds the state exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .dedup import HashSet64, MinHashLSH, exact_jaccard

CHUNK = 1 << 15  # kept documents per sketch block (the store grows a block at a time, never copies)
EXACT_MAX_CHARS = 256  # dedup keys up to this long are kept and compared exactly


def exact_key(key: str) -> str:
    """The text kept for exact comparison: the dedup key of a short document, else ''."""
    return key if len(key) <= EXACT_MAX_CHARS else ""


class NearDedup:
    """Decides, in record order, whether each document of a batch is a near duplicate of a kept one."""

    def __init__(self, lsh: MinHashLSH):
        self.lsh = lsh
        self.table = HashSet64(values=True)  # band key -> kept document number + 1
        self.blocks: list[np.ndarray] = []  # (CHUNK, num_perm) uint8 sketches
        self.where: list[np.ndarray] = []  # (CHUNK,) uint64 where each kept document was read
        self.keys: list[str] = []  # each kept document's exact_key ('' for a long one)
        self.n = 0
        self._batch: dict[str, Any] = {}

    def __len__(self) -> int:
        return self.n

    # ---- the store
    def _append(self, bands: np.ndarray, sk: np.ndarray, where: np.ndarray, keys: list[str]) -> None:
        ids = np.arange(self.n, self.n + len(sk), dtype=np.uint64)
        pos = 0
        while pos < len(sk):
            b, r = divmod(self.n + pos, CHUNK)
            if b == len(self.blocks):
                self.blocks.append(np.zeros((CHUNK, self.lsh.num_perm), dtype=np.uint8))
                self.where.append(np.zeros(CHUNK, dtype=np.uint64))
            take = min(CHUNK - r, len(sk) - pos)
            self.blocks[b][r:r + take] = sk[pos:pos + take]
            self.where[b][r:r + take] = where[pos:pos + take]
            pos += take
        self.n += len(sk)
        self.keys.extend(keys)
        self.table.add(bands.reshape(-1), np.repeat(ids + np.uint64(1), bands.shape[1]))

    def _gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sketches and wheres of kept documents ``ids`` (any shape)."""
        flat = ids.reshape(-1)
        sk = np.zeros((flat.size, self.lsh.num_perm), dtype=np.uint8)
        wh = np.zeros(flat.size, dtype=np.uint64)
        blk, row = flat // CHUNK, flat % CHUNK
        for b in np.unique(blk).tolist():
            sel = blk == b
            sk[sel] = self.blocks[b][row[sel]]
            wh[sel] = self.where[b][row[sel]]
        return sk.reshape(*ids.shape, -1), wh.reshape(ids.shape)

    def rebuild(self, logs: dict[str, Path]) -> None:
        """The state of a resumed run, from the logs ``add``'s rows were written to."""
        bands = np.fromfile(logs["lsh"], dtype=np.uint64)
        sk = np.fromfile(logs["lsh_sketch"], dtype=np.uint8)
        where = np.fromfile(logs["lsh_where"], dtype=np.uint64)
        lens = np.fromfile(logs["lsh_exact_len"], dtype=np.uint32)
        blob = Path(logs["lsh_exact"]).read_bytes()
        n = where.size
        if bands.size != n * self.lsh.bands or sk.size != n * self.lsh.num_perm or lens.size != n \
                or int(lens.sum()) != len(blob):
            raise ValueError(f"{logs['lsh']}: near-dedup logs of different lengths; delete the output folder and rerun")
        ends = np.cumsum(lens).tolist()
        keys = [blob[e - k:e].decode("utf-8", "surrogatepass") for e, k in zip(ends, lens.tolist())]
        if n:
            self._append(bands.reshape(n, -1), sk.reshape(n, -1), where, keys)

    # ---- one batch, in record order
    def start_batch(self, bands: np.ndarray, sk: np.ndarray, keys: list[str] | None = None) -> None:
        """Look the batch's documents up among those kept before it (verified candidates only); ``keys`` are
        the documents' ``exact_key``s (None: compare every pair by its sketches)."""
        m = len(sk)
        keys = keys if keys is not None else [""] * m
        prev = np.zeros(m, dtype=np.uint64)
        if self.n and m:
            ids = self.table.get(bands.reshape(-1)).reshape(m, -1)  # doc + 1, 0 = no candidate
            docs = np.where(ids > 0, ids - np.uint64(1), np.uint64(0)).astype(np.int64)
            cand_sk, cand_where = self._gather(docs)
            ok = (ids > 0) & (self.lsh.similarity(sk[:, None, :], cand_sk) >= self.lsh.accept)
            for i in (i for i in range(m) if keys[i]):
                self._check_exactly(keys[i], ids[i], docs[i], ok[i])
            first = ok.argmax(axis=1)
            hit = ok.any(axis=1)
            prev[hit] = cand_where[np.nonzero(hit)[0], first[hit]]
        self._batch = {"bands": bands, "sk": sk, "keys": keys, "prev": prev, "seen": {}, "kept": [], "kept_where": {}}

    def _check_exactly(self, key: str, ids: np.ndarray, docs: np.ndarray, ok: np.ndarray) -> None:
        """A short row: its candidates that are short too are judged exactly (in ``ok``, in band order up to
        the first match, which is the one reported; each kept document compared once)."""
        verdicts: dict[int, bool] = {}
        for j in np.nonzero(ids)[0].tolist():
            doc = int(docs[j])
            other = self.keys[doc]
            if other:
                if doc not in verdicts:
                    verdicts[doc] = self._exactly_similar(key, other)
                ok[j] = verdicts[doc]
            if ok[j]:
                return

    def _exactly_similar(self, a: str, b: str) -> bool:
        return exact_jaccard(a, b, self.lsh.ngram) >= self.lsh.threshold

    def _similar(self, i: int, j: int) -> bool:
        """Rows i and j of this batch: exactly when both are short, else by their sketches."""
        b = self._batch
        if b["keys"][i] and b["keys"][j]:
            return self._exactly_similar(b["keys"][i], b["keys"][j])
        return bool(self.lsh.similarity(b["sk"][i], b["sk"][j]) >= self.lsh.accept)

    def duplicate_of(self, i: int) -> int:
        """Where the kept document that row ``i`` nearly duplicates was read (0: none), this batch's included."""
        b = self._batch
        if b["prev"][i]:
            return int(b["prev"][i])
        for k in b["bands"][i].tolist():
            j = b["seen"].get(k)
            if j is not None and self._similar(i, j):
                return b["kept_where"][j]
        return 0

    def keep(self, i: int, where: int) -> None:
        """Row ``i`` is kept: later rows are compared with it."""
        b = self._batch
        for k in b["bands"][i].tolist():
            b["seen"].setdefault(k, i)
        b["kept"].append(i)
        b["kept_where"][i] = where

    def end_batch(self, files: dict[str, Any]) -> None:
        """Add the batch's kept documents to the store and append them to the logs."""
        b = self._batch
        if b.get("kept"):
            rows = np.asarray(b["kept"])
            bands, sk = b["bands"][rows], b["sk"][rows]
            where = np.asarray([b["kept_where"][i] for i in b["kept"]], dtype=np.uint64)
            keys = [b["keys"][i] for i in b["kept"]]
            self._append(bands, sk, where, keys)
            bands.tofile(files["lsh"])
            sk.tofile(files["lsh_sketch"])
            where.tofile(files["lsh_where"])
            encoded = [k.encode("utf-8", "surrogatepass") for k in keys]
            np.asarray([len(e) for e in encoded], dtype=np.uint32).tofile(files["lsh_exact_len"])
            files["lsh_exact"].write(b"".join(encoded))
        self._batch = {}
