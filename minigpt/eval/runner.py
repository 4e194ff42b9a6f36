"""Evaluate a run: benchmarks (the built-in cloze, your C-Eval / CMMLU / JSONL), validation loss, SFT before/after
answers and generation speed, for every model the run has; written to runs/<run>/eval/results.json.

The report card (`python -m minigpt.report RUN_DIR`) reads that file; notebook 06 calls `evaluate_run`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write_json
from .cloze import ensure_cloze, load_cloze
from .config import EvalConfig
from .loaders import Benchmark, load_benchmarks
from .scoring import evaluate_items

logger = logging.getLogger(__name__)

RESULTS = Path("eval") / "results.json"
SFT_PROMPTS = ["你好", "介绍一下中国", "你叫什么名字？"]


def run_models(run_dir: Path, checkpoint: str = "") -> dict[str, Path]:
    """name -> checkpoint folder of the models a run has: pretrain, sft, and an explicit checkpoint if given."""
    found = {name: run_dir / name / "final_model" for name in ("pretrain", "sft")}
    found = {k: v for k, v in found.items() if v.is_dir()}
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint: {path} not found; expected a checkpoint folder")
        if path.resolve() not in {p.resolve() for p in found.values()}:
            found["checkpoint"] = path
    return found


def main_model(models: dict[str, Path]) -> str | None:
    """The model a run is judged by: an explicit checkpoint, else the SFT model, else the pretrained one."""
    return next((k for k in ("checkpoint", "sft", "pretrain") if k in models), None)


def _load(path: Path, device: torch.device):
    from ..train.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device)[:2]


def untrained_like(model: Any, seed: int = 0) -> Any:
    """A freshly initialised model of the same shape: what the benchmarks give before any training."""
    from ..model.gpt import GPT

    torch.manual_seed(seed)
    return GPT(model.config).to(next(model.parameters()).device).eval()


def _row(bench: str, model: str, result: dict[str, Any], **extra: Any) -> dict[str, Any]:
    keep = ("n", "correct", "accuracy", "ci95", "accuracy_norm", "random", "style", "chat", "num_fewshot")
    return {"benchmark": bench, "model": model, **{k: result[k] for k in keep}, **extra}


def _cloze_sets(run_dir: Path, cfg: EvalConfig) -> list[tuple[str, list, bool]]:
    """(name, items, chat) of the built-in cloze sets this run can make."""
    sets = []
    for chat in (False, True):
        path = ensure_cloze(run_dir, chat, cfg.cloze_items, cfg.cloze_seed, cfg.cloze_prefix_chars,
                            cfg.cloze_min_chars, cfg.cloze_max_chars)
        if path is not None:
            use_chat = cfg.chat_template == "always" or (chat and cfg.chat_template == "auto")
            sets.append(("cloze_chat" if chat else "cloze", load_cloze(path), use_chat))
    return sets


def _style(b: Benchmark, cfg: EvalConfig) -> str:
    return b.style if cfg.mc_style == "auto" else cfg.mc_style


def score_user_benchmarks(model: Any, tok: Any, benches: list[Benchmark], cfg: EvalConfig, name: str) -> list[dict]:
    """One row per subject and, for several subjects of one kind, a row for all of them together."""
    rows = []
    chat = cfg.chat_template == "always"
    for b in benches:
        r = evaluate_items(model, tok, b.items, _style(b, cfg), chat, cfg.num_fewshot, b.shots or None)
        rows.append(_row(f"{b.kind}/{b.name}", name, r))
    for kind in sorted({b.kind for b in benches}):
        mine = [r for r in rows if r["benchmark"].startswith(f"{kind}/")]
        if len(mine) > 1:
            from .scoring import wilson_interval

            n, c = sum(r["n"] for r in mine), sum(r["correct"] for r in mine)
            total = dict(mine[0], benchmark=f"{kind} (all {len(mine)})", n=n, correct=c, accuracy=c / n,
                         ci95=list(wilson_interval(c, n)),
                         accuracy_norm=sum(r["accuracy_norm"] * r["n"] for r in mine) / n,
                         random=sum(r["random"] * r["n"] for r in mine) / n)
            rows.append(total)
    return rows

def run_seed(folder: Path) -> int:
    """The training seed a checkpoint was made with (config.json "train"), 0 when it does not say."""
    from ..config import TrainConfig
    from ..train.checkpoint import read_config

    train = read_config(folder, check_weights=False).get("train") or {}
    if not isinstance(train, dict) or not train:
        return 0
    try:
        return int(TrainConfig.from_flat(**train).schedule.seed)
    except (TypeError, ValueError):
        return 0



def val_metrics(model: Any, run_dir: Path) -> dict[str, float] | None:
    """Validation loss, perplexity and bits per character on runs/<run>/tokens (None without token files)."""
    from ..infer.evaluate import evaluate_split

    if not (run_dir / "tokens" / "val.bin").is_file():
        return None
    m = evaluate_split(model, run_dir / "tokens", "val", num_batches=20)
    return {k: float(m[k]) for k in ("loss", "perplexity", "bpc") if k in m}


def sft_answers(before: Any, after: Any, tok: Any, prompts: list[str] = SFT_PROMPTS) -> list[dict[str, str]]:
    """Greedy chat replies of the pretrained model (before SFT) and the SFT model (after) to the same prompts."""
    from ..infer.generate import GenerationConfig, TextGenerator

    cfg = GenerationConfig(do_sample=False, max_new_tokens=32)
    out = []
    for p in prompts:
        msgs = [{"role": "user", "content": p}]
        out.append({"prompt": p, "before": TextGenerator(before, tok).chat(msgs, cfg),
                    "after": TextGenerator(after, tok).chat(msgs, cfg)})
    return out


def generation_speed(model: Any, tok: Any, new_tokens: int = 32) -> dict[str, Any]:
    """Greedy decoding tokens/s at batch 1 (the second of two runs; the first compiles and warms up)."""
    from ..infer.generate import GenerationConfig, TextGenerator

    gen = TextGenerator(model, tok)
    new_tokens = max(1, min(new_tokens, model.config.max_seq_len - 8))
    cfg = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, ignore_eos=True)
    gen.generate("你好，", cfg)
    t = time.perf_counter()
    gen.generate("你好，", cfg)
    dt = time.perf_counter() - t
    return {"new_tokens": new_tokens, "seconds": dt, "tokens_per_s": new_tokens / dt,
            "device": str(next(model.parameters()).device), "threads": torch.get_num_threads()}


def _benchmark_models(run_dir: Path, models: dict[str, Path], cfg: EvalConfig, device: torch.device,
                      results: dict[str, Any], progress: Callable[[str], None]) -> None:
    sets = _cloze_sets(run_dir, cfg)
    user = load_benchmarks(cfg.eval_data, cfg.max_items) if cfg.eval_data else []
    main = main_model(models)
    loaded = {name: _load(path, device) for name, path in models.items()}
    if cfg.untrained_baseline and main:
        loaded = {"untrained": (untrained_like(loaded[main][0]), loaded[main][1]), **loaded}
    for name, (model, tok) in loaded.items():
        for bench, items, chat in sets:
            r = evaluate_items(model, tok, items, "cloze", chat, cfg.num_fewshot)
            results["benchmarks"].append(_row(bench, name, r))
            progress(f"{bench:<12} {name:<10} {r['accuracy']:.3f} (random {r['random']:.3f}, n={r['n']})")
        if name == main and user:
            results["benchmarks"] += score_user_benchmarks(model, tok, user, cfg, name)
        if name != "untrained":
            results["val"][name] = val_metrics(model, run_dir)
    if "pretrain" in loaded and "sft" in loaded:
        results["sft_answers"] = sft_answers(loaded["pretrain"][0], loaded["sft"][0], loaded["sft"][1])
    if main:
        results["generation"] = dict(generation_speed(*loaded[main], cfg.speed_new_tokens), model=main)


def evaluate_run(run_dir: str | Path, cfg: EvalConfig | None = None,
                 progress: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Evaluate every model of a run (see the module docstring); writes and returns runs/<run>/eval/results.json."""
    from ..devices import pick_device

    cfg = cfg or EvalConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    models = run_models(run_dir, cfg.checkpoint)
    results: dict[str, Any] = {"models": {k: str(v) for k, v in models.items()}, "main_model": main_model(models),
                               "config": cfg.to_dict(), "benchmarks": [], "val": {}, "sft_answers": [],
                               "generation": None, "written_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not models:
        logger.warning("%s: no trained model (pretrain/final_model or sft/final_model); nothing to evaluate", run_dir)
    else:
        _benchmark_models(run_dir, models, cfg, pick_device(cfg.device), results, progress)
    atomic_write_json(run_dir / RESULTS, results)
    return results
