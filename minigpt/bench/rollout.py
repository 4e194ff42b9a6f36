"""Rollouts for RL: GRPO's sampling call against `transformers` `generate` on the same exported model.

RL (minigpt/train/rl.py) spends most of its wall time sampling: every round, `RolloutBatches` draws `group_size`
completions of each problem with `TextGenerator.generate_ids`, at temperature 1.0 without top-k/top-p
(`rollout_config`), on a float32 CPU model with the C decode step. This part times exactly that call on chat
prompts of built-in skill problems (their lengths differ, so the batch is left-padded) against HF `generate`
with the same sampling and `num_return_sequences=group_size`. Both sides make exactly `new_tokens` per row
(`ignore_eos` / `min_new_tokens`), so both count prompts x group_size x new_tokens generated tokens.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .generate import _load_hf, bench_tokenizer, random_exported

logger = logging.getLogger(__name__)

# prompts x samples per prompt x new tokens: one RL round at the default group size and completion length
ROLLOUT_CASE = {"prompts": 64, "group_size": 8, "new_tokens": 16}
QUICK_ROLLOUT_CASE = {"prompts": 8, "group_size": 4, "new_tokens": 8}
# the timed calls, in order: a load that drifts during the pair weighs on both sides alike (as in the train bench)
_ORDER = ("minigpt", "hf", "hf", "minigpt")


def skill_prompts(gen: Any, n: int, seed: int = 0) -> list[list[int]]:
    """`n` chat prompts of built-in skill problems (train split, every family, drawn with `seed`), rendered the way
    `RolloutBatches` renders them."""
    from ..data.skills import FAMILIES, make_skills
    from ..train.rl import RLConfig, rollout_config

    items = make_skills("train", -(-n // len(FAMILIES)), seed=seed)
    chosen = random.Random(seed).sample(items, n)
    cfg = rollout_config(RLConfig(), seed)
    return [gen.chat_prompt_ids(item.messages(), cfg) for item in chosen]


def minigpt_rollouts(gen: Any, prompts: list[list[int]], group_size: int, new_tokens: int,
                     seed: int = 0) -> tuple[int, int]:
    """One RL round's sampling call: each prompt repeated `group_size` times (as `RolloutBatches.batch_at` does),
    `rollout_config` at temperature 1.0 with ignore_eos. Returns (rows, generated tokens)."""
    from ..train.rl import RLConfig, rollout_config

    rl = RLConfig(group_size=group_size, temperature=1.0, max_new_tokens=new_tokens)
    cfg = dataclasses.replace(rollout_config(rl, seed), ignore_eos=True)  # exactly new_tokens a row, as on HF's side
    out = gen.generate_ids([p for p in prompts for _ in range(group_size)], cfg)
    return len(out), sum(map(len, out))


def hf_rollouts(hf_model: Any, prompts: list[list[int]], group_size: int, new_tokens: int, pad_id: int,
                seed: int = 0) -> tuple[int, int]:
    """The same round with HF `generate`: a left-padded batch with its attention mask, pure sampling at
    temperature 1.0, `num_return_sequences=group_size`. Returns (rows, generated tokens)."""
    import torch

    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = hf_model.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                num_return_sequences=group_size, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, pad_token_id=pad_id)
    return out.shape[0], out.shape[0] * (out.shape[1] - width)


def _time_sides(sides: dict[str, Callable[[], tuple[int, int]]]) -> dict[str, dict[str, Any]]:
    """One warm-up call of each side, then the calls of _ORDER; tokens/s = generated tokens / mean seconds."""
    for fn in sides.values():
        fn()  # warm-up: allocator, first-call dispatch, building the C step
    runs: dict[str, list[tuple[float, int, int]]] = {k: [] for k in sides}
    for k in (k for k in _ORDER if k in sides):
        t = time.perf_counter()
        rows, n = sides[k]()
        runs[k].append((time.perf_counter() - t, rows, n))
    out = {}
    for k, rs in runs.items():
        counts = {r[1:] for r in rs}
        if len(counts) != 1:
            raise RuntimeError(f"rollout bench: {k} made different (rows, tokens) in its runs: {sorted(counts)}")
        (rows, n), seconds = counts.pop(), [r[0] for r in rs]
        out[k] = {"tokens_per_s": n / (sum(seconds) / len(seconds)), "seconds": seconds, "rows": rows,
                  "generated_tokens": n}
    return out


def bench_rollouts(model: Any, tokenizer: Any, hf_dir: str | Path | None = None, prompts: int = 64,
                   group_size: int = 8, new_tokens: int = 16, seed: int = 0) -> dict[str, Any]:
    """Rollout tokens/s of minigpt's RL sampling call (and of HF `generate` on `hf_dir`, the exported folder of
    the same model, when transformers is installed) on `prompts` skill prompts x `group_size` samples x
    `new_tokens`. Returns {"prompts", "group_size", "new_tokens", "prompt_tokens": [min, max], "threads",
    "backend", "minigpt": {"tokens_per_s", "seconds", "rows", "generated_tokens"}, "hf": {...}, "ratio"}
    ("hf" and "ratio" only with hf_dir)."""
    import torch

    from ..infer.generate import TextGenerator

    gen = TextGenerator(model, tokenizer)
    hf_model = _load_hf(hf_dir)
    prompt_ids = skill_prompts(gen, prompts, seed)
    sides = {"minigpt": lambda: minigpt_rollouts(gen, prompt_ids, group_size, new_tokens, seed)}
    if hf_model is not None:
        sides["hf"] = lambda: hf_rollouts(hf_model, prompt_ids, group_size, new_tokens, tokenizer.pad_id, seed)
    res: dict[str, Any] = {"prompts": prompts, "group_size": group_size, "new_tokens": new_tokens,
                           "prompt_tokens": [min(map(len, prompt_ids)), max(map(len, prompt_ids))],
                           "threads": torch.get_num_threads(), **_time_sides(sides)}
    res["backend"] = gen.last_stats.get("backend")
    if "hf" in res:
        res["ratio"] = res["minigpt"]["tokens_per_s"] / res["hf"]["tokens_per_s"]
    logger.info("rollouts: %s", ", ".join(f"{k} {res[k]['tokens_per_s']:.0f} tok/s" for k in sides))
    return res


def bench_rollout(preset: str = "tiny", quick: bool = False) -> dict[str, Any]:
    """The rollout comparison on a randomly initialised `preset` model, exported to transformers:
    ROLLOUT_CASE, or QUICK_ROLLOUT_CASE with `quick`. Returns bench_rollouts' dict plus "preset"."""
    case = QUICK_ROLLOUT_CASE if quick else ROLLOUT_CASE
    with tempfile.TemporaryDirectory() as tmp:
        tok = bench_tokenizer()
        model, hf_dir = random_exported(preset, tok, Path(tmp))
        return {"preset": preset, **bench_rollouts(model, tok, hf_dir=hf_dir, **case)}
