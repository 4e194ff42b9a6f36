"""Text tools: tokenizer training/encoding and cleaning throughput on the built-in corpus."""
from __future__ import annotations

import logging
from typing import Any

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
    from ..data.clean import bench_clean
    from ..data.packing import bench_tokenizer

    texts = builtin_texts(5000 if quick else 10 ** 9)
    return {"tokenizer": bench_tokenizer(texts, vocab_size=6400),
            "clean": bench_clean(n_mb=5 if quick else 50, near_dedup=False),
            "clean_near_dedup": bench_clean(n_mb=2 if quick else 10, near_dedup=True)}
