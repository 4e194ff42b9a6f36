"""run_cleaning: read every source in batches, clean, filter, dedup and write; checkpoint to resume.

Outputs are written under temporary names (``*.partial``) and renamed when the run completes. A
checkpoint (``.clean_state.json``) records how far each output file and each input has got; an
interrupted run started again truncates the outputs back to the checkpoint and carries on, so the
result equals an uninterrupted run byte for byte. The dedup tables are rebuilt from append-only
key logs. Worker processes (``prepare.BatchPool``) do the per-record work; everything that depends on
earlier records happens here, in input order, so neither the output nor a resume depends on them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...atomic import atomic_write_text
from .. import sources as S
from ..normalize import NORMALIZE_VERSION, VERSION_KEY
from .config import CleanConfig
from .dedup import HashSet64, MinHashLSH, is_val
from .near import EXACT_MAX_CHARS, NearDedup
from .outputs import ensure_val_split
from .prepare import MIN_POOL_BYTES, BatchPool, Prepared, resolve_workers
from .reasons import EXACT_DUPLICATE, NEAR_DUPLICATE, REASONS, STEPS

logger = logging.getLogger(__name__)

OUTPUTS = {"train": "train.jsonl", "val": "val.jsonl", "sft": "sft.jsonl", "sft_val": "sft_val.jsonl",
           "rejects": "rejects.jsonl"}
# dedup key logs (the tables are rebuilt from them on resume) and, beside each, where every key was first seen
KEYLOGS = {"exact": ".exact_keys.bin", "lsh": ".lsh_keys.bin", "exact_where": ".exact_where.bin",
           "lsh_where": ".lsh_where.bin", "lsh_sketch": ".lsh_sketches.bin", "lsh_exact": ".lsh_exact.bin",
           "lsh_exact_len": ".lsh_exact_len.bin"}
DEDUP_FORMAT = 3  # the layout of the key logs (a checkpoint in another layout is not resumed)
_LINE_BITS = 40  # a "where" value: (source index + 1) << 40 | line
STATE_FILE = ".clean_state.json"
BATCH = 512
HIST_BINS = 24  # length histogram bins: [0], [1], [2,4), [4,8), ... by bit length

# a verdict on one record: ("reject", reason, detail), ("cap",) or (kind, output line, nchars) to keep
Verdict = tuple
# a record that passed the filters: (source, item, kind, output line, dedup hash, nchars, LSH row or -1)
Candidate = tuple[S.Source, S.Item, str, Any, int, int, int]


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
    state = _load_state(out, fp) if resume else None
    phase = state.get("phase") if state is not None else None
    if phase == "done" and (out / "stats.json").exists() and all((out / v).exists() for v in OUTPUTS.values()):
        logger.info("%s is already complete; returning its stats (resume=False to redo)", out)
        return json.loads((out / "stats.json").read_text(encoding="utf-8"))
    if phase == "finalizing":
        return _finalize(out, state["stats"], state)
    if phase != "running":
        state = None
    if state is None:
        stats = _new_stats(cfg, srcs)
        state = {"version": 1, "fingerprint": fp, "phase": "running", "source": 0, "pos": 0, "line": 0}
        sizes = None
    else:
        stats, sizes = state["stats"], state["sizes"]
        logger.info("resuming %s at source %d, line %d", out, state["source"], state["line"])
    result = _run_sources(_Run(cfg, out, stats, state, srcs), srcs, sizes)
    logger.info("cleaning done: %s kept, %s rejected, %.1f s", result["kept"], result["rejected_total"],
                result["elapsed_s"])
    return result


def _load_state(out: Path, fingerprint: str) -> dict | None:
    """The checkpoint of an earlier run with the same config and inputs, or None."""
    state_path = out / STATE_FILE
    if not state_path.exists():
        return None
    state = None
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except ValueError:
        logger.warning("%s is unreadable; starting the cleaning run afresh", state_path)
    if state is not None and state.get("fingerprint") != fingerprint:
        logger.info("config or inputs changed since the last run in %s; starting afresh", out)
        state = None
    return state


def _sources(cfg: CleanConfig) -> list[S.Source]:
    srcs = []
    if cfg.use_full_data or not cfg.data_files:
        srcs += S.builtin_sources(cfg.use_full_data, cfg.sft_language)
    srcs += [S.file_source(p) for p in cfg.data_files]  # raises on missing / empty / unsupported
    return srcs


def _fingerprint(cfg: CleanConfig, srcs: list[S.Source]) -> str:
    """What a checkpoint must match to be resumed: the config (display options aside) and the input files."""
    d = asdict(cfg)
    for k in ("progress", "checkpoint_every", "workers"):  # the output does not depend on these
        d.pop(k, None)
    files = [(s.path, s.fmt, os.path.getsize(s.path)) for s in srcs]
    return hashlib.sha256(json.dumps([d, files, DEDUP_FORMAT], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _new_stats(cfg: CleanConfig, srcs: list[S.Source]) -> dict:
    return {
        VERSION_KEY: NORMALIZE_VERSION,  # the text normalisation of every kept text (tokenizers check it)
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


def _run_sources(run: "_Run", srcs: list[S.Source], sizes: dict[str, int] | None) -> dict:
    """Read the sources from the checkpointed one on, then finalize; returns the final stats."""
    from tqdm.auto import tqdm

    stats, state = run.stats, run.state
    run.open(sizes)
    bar = tqdm(total=stats["input_bytes"], unit="B", unit_scale=True, desc="cleaning", disable=not run.cfg.progress)
    try:
        for si in range(state["source"], len(srcs)):
            start = (state["pos"], state["line"]) if si == state["source"] else (0, 0)
            _run_source(run, si, srcs[si], start, bar)
        run.stop_clock()
        run.close()
        state["stats"] = stats
        return _finalize(run.out, stats, state)
    finally:
        bar.close()
        run.close()


def _run_source(run: "_Run", si: int, src: S.Source, start: tuple[int, int], bar: Any) -> None:
    """Source number ``si`` from ``start`` = (pos, line), in batches; checkpoints as it goes and at its end."""
    cfg, stats = run.cfg, run.stats
    kinds = [src.kind] if src.kind else ["text", "chat"]
    if all(run.full(k) for k in kinds):
        logger.info("max_data_size reached; skipping %s", src.path)
        return
    logger.info("reading %s (%s)", src.path, src.name)
    since = 0
    by_bytes = src.fmt in ("jsonl", "lines", "txt")  # there ``pos`` is a byte offset
    done = start[0] if by_bytes else 0
    for (batch, counts), prep in run.pool.map(_read_batches(cfg, src, start)):
        run.process(batch, prep, counts)
        since += len(batch)
        last = batch[-1][1]
        if by_bytes:
            bar.update(last.pos - done)
            done = last.pos
        if since >= cfg.checkpoint_every:
            run.checkpoint(si, last.pos, last.line)
            since = 0
        # a file of unknown kind stops once every kind it has produced so far is full
        seen = kinds if src.kind else [k for k in kinds if stats["files"][src.path].get(k)]
        if seen and all(run.full(k) for k in seen):
            logger.info("max_data_size reached; stopping %s at line %d", src.path, last.line)
            break
    if src.name == src.path:  # a user file: must have given something usable
        _check_file(stats, src)
    bar.update(max(0, os.path.getsize(src.path) - done))
    run.checkpoint(si + 1, 0, 0)


def _read_batches(cfg: CleanConfig, src: S.Source, start: tuple[int, int]) -> Iterator[tuple[tuple, list]]:
    """((batch of (source, item), reader step counts of the batch), the records a worker prepares)."""
    counters: dict[str, int] = {}
    batch: list[tuple[S.Source, S.Item]] = []
    items = S.iter_source(src, text_column=cfg.text_column, max_line_bytes=cfg.max_line_bytes,
                          start_pos=start[0], start_line=start[1], counters=counters)
    for item in items:
        batch.append((src, item))
        if len(batch) >= BATCH:
            yield (batch, dict(counters)), _records(batch)
            batch = []
            counters.clear()  # the reader keeps counting into the same dict
    if batch:
        yield (batch, dict(counters)), _records(batch)


def _records(batch: list[tuple[S.Source, S.Item]]) -> list:
    return [(item.kind, item.value, src.pos_tagged) for src, item in batch if item.kind != "reject"]


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
    """Rename the outputs into place, write stats.json, mark the run done and drop the key logs."""
    state["phase"] = "finalizing"
    atomic_write_text(out / STATE_FILE, json.dumps(state))
    ensure_val_split({k: out / (v + ".partial") for k, v in OUTPUTS.items()}, stats)
    for v in OUTPUTS.values():
        if (out / (v + ".partial")).exists():
            os.replace(out / (v + ".partial"), out / v)
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


class _Run:
    """State of one cleaning run: open outputs, dedup tables, counters, the checkpoint."""

    def __init__(self, cfg: CleanConfig, out: Path, stats: dict, state: dict, srcs: list[S.Source]):
        self.cfg, self.out, self.stats, self.state = cfg, out, stats, state
        self.srcs, self.src_index = srcs, {(s.path, s.fmt): i for i, s in enumerate(srcs)}
        self.exact = HashSet64(values=True)
        self.near = NearDedup(MinHashLSH(cfg.near_dedup_num_perm, cfg.near_dedup_threshold, cfg.near_dedup_ngram)) \
            if cfg.near_dedup else None
        workers = resolve_workers(cfg.workers)
        self.pool = BatchPool(cfg, workers if stats["input_bytes"] >= MIN_POOL_BYTES else 1)
        self.files: dict[str, Any] = {}
        self.cap = cfg.max_data_size or None
        self.t0, self.elapsed0 = time.perf_counter(), stats["elapsed_s"]

    # ---- files and checkpoints
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
            self.exact.add(*_read_log(names["exact"], names["exact_where"]))
            if self.near is not None:
                self.near.rebuild(names)
        self.t0 = time.perf_counter()

    def sizes(self) -> dict[str, int]:
        for f in self.files.values():
            f.flush()
        return {k: f.tell() for k, f in self.files.items()}

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files = {}
        self.pool.close()

    def stop_clock(self) -> None:
        self.stats["elapsed_s"] = self.elapsed0 + time.perf_counter() - self.t0

    def checkpoint(self, source: int, pos: int, line: int) -> None:
        """Record that everything before (source, pos, line) is in the outputs at their current sizes."""
        self.stop_clock()
        self.state.update(source=source, pos=pos, line=line, sizes=self.sizes(), stats=self.stats)
        atomic_write_text(self.out / STATE_FILE, json.dumps(self.state, ensure_ascii=False))

    # ---- where a record was first seen, for the detail of a duplicate
    def where(self, src: S.Source, line: int) -> int:
        return ((self.src_index.get((src.path, src.fmt), -1) + 1) << _LINE_BITS) | line

    def describe_where(self, where: int) -> str:
        si, line = (where >> _LINE_BITS) - 1, where & ((1 << _LINE_BITS) - 1)
        return f"{self.srcs[si].path}:{line}" if 0 <= si < len(self.srcs) else "an earlier record"

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

    def over_cap(self, src: S.Source) -> None:
        self.stats["over_cap"] += 1
        _source_stats(self.stats, src)["over_cap"] += 1

    def full(self, kind: str) -> bool:
        """Has ``kind`` ("text" or "chat") reached max_data_size kept records?"""
        if self.cap is None:
            return False
        k = self.stats["kept"]
        return (k["train"] + k["val"] if kind == "text" else k["sft"] + k["sft_val"]) >= self.cap

    def keep(self, src: S.Source, kind: str, line: bytes, h: int, nchars: int) -> None:
        """Write a kept record's output line (made by the worker) to its split."""
        st = self.stats
        if kind == "text":
            split = "val" if is_val(h, self.cfg.val_fraction) else "train"
        else:
            split = "sft_val" if is_val(h, self.cfg.sft_val_fraction) else "sft"
        self.files[split].write(line)
        st["kept"][split] += 1
        st["chars"][split] += nchars
        st["length_hist"][kind][min(nchars.bit_length(), HIST_BINS - 1)] += 1
        ss = _source_stats(st, src)
        ss["docs"] += 1
        ss["chars"] += nchars
        ss[split] += 1

    # ---- one batch of records
    def process(self, batch: list[tuple[S.Source, S.Item]], prep: Prepared, counts: dict[str, int]) -> None:
        """One prepared batch (all from one source): count, apply the cap, then dedup and write in record order."""
        steps = self.stats["steps"]
        for d in (counts, prep.steps):
            for k, v in d.items():
                if v:
                    steps[k] = steps.get(k, 0) + v
        verdicts = self._judge(batch, prep.verdicts)
        cands = self._account(batch, verdicts, prep)
        if cands:
            self._dedup_and_keep(cands, prep)

    def _judge(self, batch: list[tuple[S.Source, S.Item]], prepared: list[tuple]) -> list[Verdict]:
        """Count the batch's records; the verdict of each: the reader's reject, the cap, or the worker's."""
        st = self.stats
        src = batch[0][0]  # a batch never spans two sources
        st["records"] += len(batch)
        _source_stats(st, src)["records"] += len(batch)
        fst = st["files"].setdefault(src.path, {"records": 0, "parsed": 0})
        fst["records"] += len(batch)
        full = {"text": self.full("text"), "chat": self.full("chat")}
        verdicts: list[Verdict] = []
        it = iter(prepared)
        for _, item in batch:
            if item.kind == "reject":
                verdicts.append(("reject", item.value, getattr(item.value, "detail", "")))
                continue
            fst["parsed"] += 1
            fst[item.kind] = fst.get(item.kind, 0) + 1  # which kinds this file holds (for the cap)
            v = next(it)
            verdicts.append(("cap",) if full[item.kind] else v)
        return verdicts

    def _account(self, batch: list[tuple[S.Source, S.Item]], verdicts: list[Verdict], prep: Prepared
                 ) -> list[Candidate]:
        """Write rejects and count over-cap records in record order; the rest become dedup candidates."""
        cands: list[Candidate] = []
        row_of = {k: r for r, k in enumerate(prep.text_rows)}  # parsed record -> its LSH row
        k = -1
        for (src, item), r in zip(batch, verdicts):
            k += item.kind != "reject"
            if r[0] == "reject":
                self.reject(src, item.line, r[1], item.excerpt, r[2])
            elif r[0] == "cap":
                self.over_cap(src)
            else:
                cands.append((src, item, r[0], r[1], prep.hashes[k], r[2], row_of.get(k, -1)))
        return cands

    def _dedup_and_keep(self, cands: list[Candidate], prep: Prepared) -> None:
        """Drop exact and near duplicates (of earlier records, this batch's included); keep the rest."""
        dup, dup_of = self._exact_duplicates(cands)
        near = self.near if prep.bands is not None else None
        if near is not None:
            near.start_batch(prep.bands, prep.sketches, prep.exact_keys)
        for i, (src, item, kind, line, h, nchars, row) in enumerate(cands):
            if dup[i]:
                self.stats["exact_duplicates"] += 1
                self.reject(src, item.line, EXACT_DUPLICATE, item.excerpt,
                            f"same text (after cleaning) as {self.describe_where(dup_of[i])}")
                continue
            if self.full(kind):
                self.over_cap(src)
                continue
            if near is not None and row >= 0:
                prev = near.duplicate_of(row)
                if prev:
                    self.stats["near_duplicates"] += 1
                    self.reject(src, item.line, NEAR_DUPLICATE, item.excerpt,
                                f"near duplicate of {self.describe_where(prev)} (character-shingle Jaccard "
                                f"similarity at or above {self.cfg.near_dedup_threshold}: exact for texts of up to "
                                f"{EXACT_MAX_CHARS} characters, else estimated from MinHash)")
                    continue
                near.keep(row, self.where(src, item.line))
            self.keep(src, kind, line, h, nchars)
        if near is not None:
            near.end_batch(self.files)

    def _exact_duplicates(self, cands: list[Candidate]) -> tuple[np.ndarray, np.ndarray]:
        """A bool per candidate and, for a duplicate, where its text was first seen; the new hashes go
        into the table and its key log."""
        dup = np.zeros(len(cands), dtype=bool)
        if not self.cfg.exact_dedup:
            return dup, np.zeros(len(cands), dtype=np.uint64)
        hashes = np.fromiter((c[4] for c in cands), dtype=np.uint64, count=len(cands))
        where = np.fromiter((self.where(c[0], c[1].line) for c in cands), dtype=np.uint64, count=len(cands))
        # first occurrence within the batch and not seen before == the sequential rule
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        dup_of = where[first][inverse.reshape(-1)]
        dup[:] = True
        dup[first] = False
        before = self.exact.get(hashes)
        seen = self.exact.contains(hashes)
        dup |= seen
        dup_of = np.where(seen, before, dup_of)
        self.exact.add(hashes[~dup], where[~dup]).tofile(self.files["exact"])
        self.exact.last_added_values.tofile(self.files["exact_where"])
        return dup, dup_of


def _read_log(keys_path: Path, where_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A dedup key log and its "where" log (a checkpoint from before the where logs existed: duplicates
    then say "an earlier record")."""
    keys = np.fromfile(keys_path, dtype=np.uint64)
    where = np.fromfile(where_path, dtype=np.uint64) if where_path.exists() else None
    if where is None or where.size != keys.size:
        where = np.ones(keys.size, dtype=np.uint64)  # non-zero: "seen", at an unknown place
    return keys, where
