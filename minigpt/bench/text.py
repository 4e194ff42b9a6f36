"""Text tools: tokenizer training/encoding and cleaning throughput on the built-in corpus."""
from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from ..data.tokenizer import MiniTokenizer

logger = logging.getLogger(__name__)


def builtin_texts(limit: int) -> list[str]:
    """Raw built-in Chinese text (People's Daily with tags stripped, then reviews), one document a line."""
    from ..data.sources import peoples_daily_path, review_paths, strip_pos_tags

    texts: list[str] = []
    for path, tagged in [(peoples_daily_path(), True)] + [(p, False) for p in review_paths()]:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                t = (strip_pos_tags(line) if tagged else line).strip()
                if t:
                    texts.append(t)
                if len(texts) >= limit:
                    return texts
    return texts


def bench_text_tools(quick: bool) -> dict[str, Any]:
    texts = builtin_texts(5000 if quick else 10 ** 9)
    return {"tokenizer": bench_tokenizer(texts, vocab_size=6400),
            "clean": bench_clean(n_mb=5 if quick else 50, near_dedup=False),
            "clean_near_dedup": bench_clean(n_mb=2 if quick else 10, near_dedup=True)}


# --------------------------------------------------------------------------- tokenizer


def bench_tokenizer(
    texts: Sequence[str],
    vocab_size: int = 6400,
    min_frequency: int = 2,
    tok: MiniTokenizer | None = None,
    repeat: int = 1,
) -> dict:
    """Tokenizer training time (unless ``tok`` is given) and batch-encode throughput in MB/s of UTF-8."""
    from ..data.tokenizer import TokenizerConfig, train_tokenizer

    texts = [t for t in texts if t]
    out: dict[str, Any] = {"n_docs": len(texts)}
    if tok is None:
        t0 = time.perf_counter()
        tok = train_tokenizer(texts, TokenizerConfig(tokenizer_vocab_size=vocab_size, min_frequency=min_frequency))
        out["train_seconds"] = time.perf_counter() - t0
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    best = float("inf")
    n_tokens = 0
    for _ in range(max(1, repeat)):  # the best of ``repeat`` timings
        t0 = time.perf_counter()
        n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
        best = min(best, time.perf_counter() - t0)
    n_chars = sum(len(t) for t in texts)
    out.update(
        vocab_size=tok.vocab_size,
        n_bytes=n_bytes,
        n_chars=n_chars,
        n_tokens=n_tokens,
        encode_seconds=best,
        encode_mb_per_s=n_bytes / best / 1e6 if best > 0 else float("inf"),
        chars_per_token=n_chars / n_tokens if n_tokens else None,
        cpu_count=os.cpu_count(),
    )
    logger.info("tokenizer bench: %s", out)
    return out


# --------------------------------------------------------------------------- cleaning


def write_synthetic_jsonl(path: str | Path, n_mb: float, seed: int = 0) -> int:
    """Pretrain JSONL of about ``n_mb`` MB built from the built-in review sentences: unique
    documents (a serial number keeps them apart), plus ~3% exact and ~3% near duplicates and
    ~1% junk lines. Returns the number of lines written."""
    from ..data.sources import review_paths

    rng = random.Random(seed)
    sentences = []
    for p in review_paths():
        with open(p, encoding="utf-8") as f:
            sentences += [ln.strip() for ln in f if len(ln.strip()) > 5]
    target = int(n_mb * 1e6)
    written, n = 0, 0
    recent: list[str] = []  # up to 1000 earlier documents to copy from
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            doc = _synthetic_doc(rng, sentences, recent, n)
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


def _synthetic_doc(rng: random.Random, sentences: list[str], recent: list[str], n: int) -> str | None:
    """An exact copy, a near copy, junk (None: a broken JSON line) or a new document numbered ``n``."""
    r = rng.random()
    if r < 0.03 and recent:
        return rng.choice(recent)
    if r < 0.06 and recent:
        d = list(rng.choice(recent))
        for _ in range(max(1, len(d) // 50)):
            d[rng.randrange(len(d))] = rng.choice("的了是在我有他这")
        return "".join(d)
    if r < 0.07:
        return "#" * rng.randrange(20, 80) if rng.random() < 0.5 else None
    return "\n".join(rng.choice(sentences) for _ in range(rng.randint(1, 3))) + f" (编号{n})"


def bench_clean(n_mb: float = 20, near_dedup: bool = False) -> dict:
    """Throughput of run_cleaning on ``n_mb`` MB of synthetic Chinese JSONL (one process, one core)."""
    from ..data.clean import CleanConfig, run_cleaning
    from ..data.clean.chars import class_tables

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "bench.jsonl"
        lines = write_synthetic_jsonl(src, n_mb)
        size = src.stat().st_size
        cfg = CleanConfig(data_files=[str(src)], near_dedup=near_dedup, progress=False)
        class_tables()  # one-time set-up, not throughput
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
