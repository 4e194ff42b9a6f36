"""Generation speed: minigpt against `transformers` `generate` on the same randomly initialised, exported model."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from .text import builtin_texts

logger = logging.getLogger(__name__)

# The sampled rows of the benchmark: notebook 05's defaults, in both libraries.
BENCH_SAMPLING = {"temperature": 0.8, "top_k": 50, "top_p": 0.9}
_PAD_ID = 3  # minigpt's <|pad|>

# The minigpt generators timed: name -> TextGenerator options.
_GENERATORS: dict[str, dict[str, Any]] = {"fp32": {}, "int8": {"quantize": "int8"}, "model": {"decode_backend": "model"}}
# variant -> (generator, or None for transformers; sampled?). Variants after the first two run at batch 1 only.
_VARIANTS: dict[str, tuple[str | None, bool]] = {
    "minigpt": ("fp32", False), "hf": (None, False), "int8": ("int8", False), "model_step": ("model", False),
    "sample": ("fp32", True), "hf_sample": (None, True)}
# The ratios the table shows: ratio name -> (minigpt variant, the transformers run it is compared with).
_RATIOS = {"ratio": ("minigpt", "hf"), "ratio_int8": ("int8", "hf"), "ratio_sample": ("sample", "hf_sample")}


def _time_minigpt(gen: Any, prompts: list[list[int]], new_tokens: int, sample: bool = False) -> float:
    from ..infer.generate import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=sample, ignore_eos=True, seed=0 if sample else None,
                           **(BENCH_SAMPLING if sample else {}))
    t = time.perf_counter()
    out = gen.generate_ids(prompts if len(prompts) > 1 else prompts[0], cfg)
    dt = time.perf_counter() - t
    n = sum(len(o) for o in out) if len(prompts) > 1 else len(out)
    return n / dt


def _time_hf(hf_model: Any, prompts: list[list[int]], new_tokens: int, sample: bool = False) -> float:
    import torch

    ids = torch.tensor(prompts, dtype=torch.long)
    with torch.inference_mode():
        t = time.perf_counter()
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=sample, max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, pad_token_id=_PAD_ID, **(BENCH_SAMPLING if sample else {}))
        dt = time.perf_counter() - t
    return len(prompts) * (out.shape[1] - ids.shape[1]) / dt


def weight_read_floor(model: Any, repeats: int = 50) -> float:
    """Tokens/s if a batch-1 step did nothing but read the float32 projection and head weights once:
    an estimate of the float32 ceiling (the fastest of `repeats` sums over one flat copy; memory speed
    on a shared machine varies, so a decoder can land a little above it in one run)."""
    import torch

    from ..infer.native_decode import block_projections

    weights = [lin.weight for blk in model.layers for lin in block_projections(blk)] + [model.lm_head.weight]
    flat = torch.cat([w.detach().float().flatten() for w in weights])
    best = float("inf")
    with torch.inference_mode():
        flat.sum()
        for _ in range(repeats):
            t = time.perf_counter()
            flat.sum()
            best = min(best, time.perf_counter() - t)
    return 1.0 / best


def _load_hf(hf_dir: str | Path | None) -> Any:
    """The exported model in transformers, or None (no folder, or transformers not installed)."""
    import importlib.util

    if hf_dir is None:
        return None
    if importlib.util.find_spec("transformers") is None:
        logger.warning("transformers is not installed (pip install -e '.[hf]'): timing minigpt alone")
        return None
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def _best_of(timers: dict[str, Any], prompts: list[list[int]], new_tokens: int, repeats: int) -> dict[str, float]:
    """Best tokens/s of each timer (a function of prompts and new tokens), interleaved: on a shared
    machine all see the same background load."""
    for timer in timers.values():
        timer(prompts, 4)  # warm-up (allocator, first-call dispatch, building the C step)
    times: dict[str, list[float]] = {k: [] for k in timers}
    for _ in range(repeats):
        for k, timer in timers.items():
            times[k].append(timer(prompts, new_tokens))
    return {k: max(v) for k, v in times.items()}


def bench_generate(model: Any, tokenizer: Any, hf_dir: str | Path | None = None, prompt: str = "长江、黄河",
                   new_tokens: int = 64, batch_sizes: Sequence[int] = (1, 8), repeats: int = 3,
                   threads: int | None = None) -> dict:
    """Greedy decode tokens/s of minigpt (and of `transformers` generate on `hf_dir`, the exported
    folder of the same model, when transformers is installed) with the same prompt in the same process;
    best of `repeats`, interleaved.

    At batch 1 more variants run: "int8" (int8 weights), "model_step" (float32, the model's forward as
    the decode step instead of the C step), and "sample" against "hf_sample" (BENCH_SAMPLING instead
    of greedy), to show what each part buys.
    Returns {"minigpt": {B: tok/s}, "hf": {B: tok/s}, "ratio": {B: x}, "int8": {1: tok/s},
    "ratio_int8": {1: x}, "model_step": {1: tok/s}, "sample": {1: tok/s}, "hf_sample": {1: tok/s},
    "ratio_sample": {1: x}, "backend": {B: name}, "fp32_read_floor": tok/s} (hf/ratios only with hf_dir).
    """
    import torch

    from ..infer.generate import TextGenerator

    if threads:
        torch.set_num_threads(threads)
    hf_model = _load_hf(hf_dir)
    gens = {k: TextGenerator(model, tokenizer, **opts) for k, opts in _GENERATORS.items()}
    prompt_ids = gens["fp32"].encode_prompt(prompt)
    res: dict[str, Any] = {"threads": torch.get_num_threads(), "new_tokens": new_tokens, "prompt_tokens": len(prompt_ids),
                           "backend": {}, **{k: {} for k in [*_VARIANTS, *_RATIOS]}}

    def timer(name: str) -> Any:
        gen, sample = _VARIANTS[name]
        if gen is not None:
            return lambda prompts, n: _time_minigpt(gens[gen], prompts, n, sample)
        return lambda prompts, n: _time_hf(hf_model, prompts, n, sample)

    for b in batch_sizes:
        names = [k for i, (k, (gen, _)) in enumerate(_VARIANTS.items())
                 if (b == 1 or i < 2) and (gen is not None or hf_model is not None)]
        best = _best_of({k: timer(k) for k in names}, [list(prompt_ids) for _ in range(b)], new_tokens, repeats)
        for k, v in best.items():
            res[k][b] = v
        for r, (mine, theirs) in _RATIOS.items():
            if b in res[mine] and b in res[theirs]:
                res[r][b] = res[mine][b] / res[theirs][b]
        res["backend"][b] = gens["fp32"].last_stats.get("backend")
        logger.info("batch %d: %s", b, ", ".join(f"{k} {v:.0f} tok/s" for k, v in best.items()))
    res["fp32_read_floor"] = weight_read_floor(model)
    return res


def bench_tokenizer() -> Any:
    """The bench's tokenizer: 6400 tokens trained on 2000 built-in documents (the vocabulary of every exported model)."""
    from ..data.tokenizer import TokenizerConfig, train_tokenizer

    return train_tokenizer(builtin_texts(2000), TokenizerConfig(tokenizer_vocab_size=6400, min_frequency=2))


def random_exported(preset: str, tok: Any, tmp: Path) -> tuple[Any, Path]:
    """`preset` with random weights (seed 0) saved with `tok` under `tmp` and exported to transformers:
    (the model in eval mode, the exported folder)."""
    import torch

    from ..config import ModelConfig
    from ..infer.export import export_hf
    from ..model.gpt import GPT
    from ..train.checkpoint import save_checkpoint

    tok_dir = tmp / "tok"
    if not tok_dir.exists():
        tok.save(tok_dir)
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, vocab_size=tok.vocab_size)
    model = GPT(cfg).eval()
    ck = tmp / preset
    save_checkpoint(ck, model, {"model": cfg.to_dict(), "tokenizer_sha256": tok.sha256}, tokenizer_dir=tok_dir)
    return model, export_hf(ck, tmp / f"{preset}-hf")


def bench_generation(presets: list[str], new_tokens: int, repeats: int) -> dict[str, Any]:
    """minigpt vs HF generate on the same randomly initialised model, exported once per preset."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tok = bench_tokenizer()
        for preset in presets:
            model, hf_dir = random_exported(preset, tok, Path(tmp))
            out[preset] = bench_generate(model, tok, hf_dir=hf_dir, new_tokens=new_tokens, repeats=repeats)
    return out
