"""The per-batch work that needs no run state, done by worker processes: normalise, length limits, quality
filters, dedup hashes, MinHash band keys and sketches. ``Cleaner`` is its per-document part (the normalisation
steps and quality filters of one config, counting what each step changed), also usable on one string.

The parent reads the input, hands batches out and takes the results back in input order (``BatchPool``), then
does everything that depends on earlier records (the cap, exact and near dedup, writing, checkpoints). So the
output does not depend on the number of workers, and a resumed run is exact. At most ``2 * workers`` batches
are in flight, so memory does not grow with the input.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from json.encoder import encode_basestring as _encode_str  # C, ensure_ascii=False flavour
from typing import Any, Iterable, Iterator

import numpy as np

from .config import CleanConfig
from .dedup import MinHashLSH, chat_dedup_key, dedup_key, text_hash
from .filters import check_chat_length, check_text_length, quality_batch
from .near import exact_key
from .normalize import normalize_batch
from .reasons import STEPS

logger = logging.getLogger(__name__)

MIN_POOL_BYTES = 8_000_000  # smaller inputs are cleaned in-process: starting workers would cost more

# one parsed record as a worker sees it: (kind "text" | "chat", value, POS tagged)
Record = tuple[str, Any, bool]


class Cleaner:
    """Per-document cleaning and filtering; counts how many documents each step changed."""

    def __init__(self, cfg: CleanConfig, steps: dict[str, int]):
        self.cfg = cfg
        self.steps = steps

    def normalize(self, s: str, pos_tagged: bool = False) -> str:
        """All enabled cleaning steps for one string (see ``normalize_batch``)."""
        return self.normalize_batch([s], [pos_tagged])[0]

    def normalize_batch(self, texts: list[str], pos_tagged: list[bool]) -> list[str]:
        """Cleaning steps in order: POS tags, full-width, NFKC, HTML, URLs, control, whitespace."""
        return normalize_batch(texts, pos_tagged, self.cfg, self.steps)

    def quality(self, s: str) -> tuple[str, str]:
        """(reason, detail) for a document that fails a quality rule, else ('', '')."""
        return self.quality_batch([s])[0]

    def quality_batch(self, texts: list[str]) -> list[tuple[str, str]]:
        """Quality rules for a batch of non-empty cleaned documents (see ``filters.QUALITY_RULES``)."""
        return quality_batch(texts, self.cfg)


@dataclass
class Prepared:
    """A batch's results, one entry per record in order: a verdict ``("reject", reason, detail)`` or
    ``(kind, output line (bytes), nchars)``, the dedup hash of a kept-so-far record (0 otherwise), and for the
    texts that passed (rows ``text_rows``) their LSH band keys and sketches when near dedup is on."""

    verdicts: list[tuple]
    hashes: list[int]
    text_rows: list[int]
    bands: np.ndarray | None
    sketches: np.ndarray | None
    steps: dict[str, int]
    exact_keys: list[str]  # per LSH row: the dedup key of a short text, compared exactly ('' for a long one)


class Preparer:
    """Prepares batches for one config (built once per worker process)."""

    def __init__(self, cfg: CleanConfig):
        self.cfg = cfg
        self.lsh = MinHashLSH(cfg.near_dedup_num_perm, cfg.near_dedup_threshold, cfg.near_dedup_ngram) \
            if cfg.near_dedup else None

    def __call__(self, records: list[Record]) -> Prepared:
        steps = {k: 0 for k in STEPS}
        cleaner = Cleaner(self.cfg, steps)
        raw, tagged = texts_to_normalize(records)
        normed = iter(cleaner.normalize_batch(raw, tagged))
        verdicts: list[tuple] = []
        for kind, value, _ in records:
            if kind == "text":
                text = next(normed)
                reason, detail = check_text_length(text, self.cfg)
                verdicts.append(("reject", reason, detail) if reason else ("text", text, len(text)))
            else:
                turns = [{"role": t["role"], "content": next(normed)} for t in value]
                nchars = sum(len(t["content"]) for t in turns)
                reason, detail = check_chat_length(turns, nchars, self.cfg)
                verdicts.append(("reject", reason, detail) if reason else ("chat", turns, nchars))
        if self.cfg.quality_filter:
            idx = [i for i, v in enumerate(verdicts) if v[0] == "text"]
            for i, (reason, detail) in zip(idx, cleaner.quality_batch([verdicts[i][1] for i in idx])):
                if reason:
                    verdicts[i] = ("reject", reason, detail)
        # one dedup key per kept record: the exact hash and (for texts) the MinHash shingles both read it
        keys = [dedup_key(v[1]) if v[0] == "text" else chat_dedup_key(v[1]) if v[0] == "chat" else None
                for v in verdicts]
        hashes = [0 if k is None else text_hash(k) for k in keys]
        rows = [i for i, v in enumerate(verdicts) if v[0] == "text"]
        bands = sketches = None
        exact: list[str] = []
        if self.lsh is not None and rows:
            text_keys = [keys[i] for i in rows]
            sig = self.lsh.signatures(text_keys)
            bands, sketches = self.lsh.band_keys(sig), self.lsh.sketch(sig)
            exact = [exact_key(k) for k in text_keys]
        # the output line is made here: bytes cross the process boundary as one copy (a str is encoded to
        # UTF-8 and decoded again), and the parent, the one serial step, only writes it
        verdicts = [v if v[0] == "reject" else (v[0], output_line(v[0], v[1]), v[2]) for v in verdicts]
        return Prepared(verdicts, hashes, rows, bands, sketches, steps, exact)


def output_line(kind: str, value: Any) -> bytes:
    """A kept record as its JSONL output line: ``{"text": ...}`` or ``{"conversations": [...]}``."""
    if kind == "text":
        # the C string encoder directly: json.dumps of a dict goes through slower Python layers
        line = '{"text": ' + _encode_str(value) + "}\n"
    else:
        line = json.dumps({"conversations": value}, ensure_ascii=False) + "\n"
    return line.encode("utf-8")


def texts_to_normalize(records: list[Record]) -> tuple[list[str], list[bool]]:
    """Every text and dialogue turn of a batch, and whether each is POS tagged, for one normalize call."""
    raw: list[str] = []
    tagged: list[bool] = []
    for kind, value, pos_tagged in records:
        if kind == "text":
            raw.append(value)
            tagged.append(pos_tagged)
        else:
            raw += [t["content"] for t in value]
            tagged += [False] * len(value)
    return raw, tagged


def resolve_workers(workers: int) -> int:
    """``workers`` (0 = every core of this machine)."""
    return workers if workers > 0 else (os.cpu_count() or 1)


_WORKER: Preparer | None = None


def _init_worker(cfg: CleanConfig) -> None:
    global _WORKER
    _WORKER = Preparer(cfg)


def _work(records: list[Record]) -> Prepared:
    assert _WORKER is not None
    return _WORKER(records)


class BatchPool:
    """``map`` over batches in input order: in this process with one worker, else in worker processes."""

    def __init__(self, cfg: CleanConfig, workers: int):
        self.workers = workers
        self.local = Preparer(cfg) if workers <= 1 else None
        self.pool = None
        if workers > 1:
            # fork where there is one: spawn would re-import the caller's __main__ (a script without a main
            # guard would start over); the workers only run numpy and regex code
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(cfg,))
            logger.info("cleaning with %d worker processes", workers)

    def map(self, batches: Iterable[tuple[Any, list[Record]]]) -> Iterator[tuple[Any, Prepared]]:
        """(tag, prepared) for each (tag, records), in order; reads ahead at most 2 * workers batches."""
        if self.pool is None:
            for tag, records in batches:
                yield tag, self.local(records)
            return
        pending: collections.deque = collections.deque()
        for tag, records in batches:
            pending.append((tag, self.pool.apply_async(_work, (records,))))
            if len(pending) >= 2 * self.workers:
                t, res = pending.popleft()
                yield t, res.get()
        while pending:
            t, res = pending.popleft()
            yield t, res.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
