"""Evaluate a run: benchmarks (the built-in cloze, your C-Eval / CMMLU / JSONL), the built-in skills, validation
loss, the chat answers of each stage and generation speed, for every model the run has: an untrained baseline (the
run's model shape with its seed's random initialisation), pretrain, sft, dpo (align/) and rl, whichever exist.
Written to runs/<run>/eval/results.json (and eval/skills.json), with each checkpoint's SHA-256 and mtime, so the
report card can tell when a stage was trained again after the evaluation (`stale_models`).

The report card (`python -m minigpt.report RUN_DIR`) reads those files; notebook 06 calls `evaluate_run`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..atomic import atomic_write_json
from .cloze import ensure_cloze, load_cloze
from .config import EvalConfig
from .loaders import Benchmark, load_benchmarks
from .scoring import bias_flag, evaluate_items, wilson_interval

logger = logging.getLogger(__name__)

RESULTS = Path("eval") / "results.json"
SFT_PROMPTS = ["你好", "介绍一下中国", "你叫什么名字？"]
# model name -> its folder under the run, in the order of the training chain
STAGE_DIRS = {"pretrain": "pretrain", "sft": "sft", "dpo": "align", "rl": "rl"}
UNTRAINED = "untrained"
NOT_EVALUATED = "not evaluated yet"


def run_models(run_dir: Path, checkpoint: str = "") -> dict[str, Path]:
    """name -> checkpoint folder of the trained models a run has (pretrain, sft, dpo, rl) and an explicit one."""
    found = {name: Path(run_dir) / d / "final_model" for name, d in STAGE_DIRS.items()}
    found = {k: v for k, v in found.items() if v.is_dir()}
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint: {path} not found; expected a checkpoint folder")
        if path.resolve() not in {p.resolve() for p in found.values()}:
            found["checkpoint"] = path
    return found


def main_model(models: dict[str, Any]) -> str | None:
    """The model a run is judged by: an explicit checkpoint, else the last stage of the chain that ran."""
    return next((k for k in ("checkpoint", "rl", "dpo", "sft", "pretrain") if k in models), None)


def checkpoint_identity(folder: Path) -> dict[str, Any]:
    """{path, sha256, mtime} of a checkpoint folder: SHA-256 over its config.json and weight files, the newest
    mtime among them. A stage trained again gets another hash, whatever the clock says."""
    folder = Path(folder)
    files = sorted([folder / "config.json", *folder.glob("*.safetensors")])
    h = hashlib.sha256()
    mtime = 0.0
    for f in files:
        if f.is_file():
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            mtime = max(mtime, f.stat().st_mtime)
    return {"path": str(folder), "sha256": h.hexdigest(), "mtime": mtime}


def stale_models(run_dir: str | Path, results: dict[str, Any] | None) -> dict[str, str]:
    """name -> why its numbers in results.json do not describe the checkpoint on disk now (empty when current):
    a stage evaluated before it was trained again, a stage that ran after the evaluation, or one that is gone."""
    run_dir = Path(run_dir)
    checkpoint = ((results or {}).get("config") or {}).get("checkpoint", "")
    try:
        models = run_models(run_dir, checkpoint)
    except FileNotFoundError:
        models = run_models(run_dir)
    recorded = (results or {}).get("models") or {}
    out = {}
    for name, path in models.items():
        rec = recorded.get(name)
        if not isinstance(rec, dict) or "sha256" not in rec:
            out[name] = f"{path} is not in {RESULTS}: {NOT_EVALUATED}"
        elif checkpoint_identity(path)["sha256"] != rec["sha256"]:
            out[name] = f"{path} changed after the evaluation: {NOT_EVALUATED}"
    for name in recorded:
        if name not in models and name != UNTRAINED:
            out[name] = f"{recorded[name].get('path') if isinstance(recorded[name], dict) else name} is gone"
    return out


def _load(path: Path, device: torch.device):
    from ..train.checkpoint import load_checkpoint

    return load_checkpoint(path, device=device)[:2]


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


def untrained_like(model: Any, seed: int = 0) -> Any:
    """A freshly initialised model of the same shape, initialised as pretraining does (torch.manual_seed(seed),
    then GPT(config)): what the benchmarks give before any training."""
    from ..model.gpt import GPT

    torch.manual_seed(seed)
    return GPT(model.config).to(next(model.parameters()).device).eval()


def untrained_identity(model: Any, seed: int) -> dict[str, Any]:
    text = json.dumps({"model": model.config.to_dict(), "seed": seed}, sort_keys=True)
    return {"path": None, "sha256": hashlib.sha256(text.encode()).hexdigest(), "mtime": None, "seed": seed}


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
            n, c = sum(r["n"] for r in mine), sum(r["correct"] for r in mine)
            total = dict(mine[0], benchmark=f"{kind} (all {len(mine)})", n=n, correct=c, accuracy=c / n,
                         ci95=list(wilson_interval(c, n)),
                         accuracy_norm=sum(r["accuracy_norm"] * r["n"] for r in mine) / n,
                         random=sum(r["random"] * r["n"] for r in mine) / n)
            rows.append(total)
    return rows


def flag_biased(rows: list[dict[str, Any]], items_by_bench: dict[str, list]) -> list[str]:
    """Mark every row of a benchmark whose untrained score is far above random (`bias_flag`); the warnings."""
    flags = []
    for r in rows:
        if r["model"] != UNTRAINED:
            continue
        msg = bias_flag(r["correct"], r["n"], r["random"], items_by_bench.get(r["benchmark"], []))
        if msg:
            flags.append(f"{r['benchmark']}: {msg}")
            for other in rows:
                if other["benchmark"] == r["benchmark"]:
                    other["flag"] = msg
    return flags


def val_metrics(model: Any, run_dir: Path) -> dict[str, float] | None:
    """Validation loss, perplexity and bits per character on runs/<run>/tokens (None without token files)."""
    from ..infer.evaluate import evaluate_split

    if not (run_dir / "tokens" / "val.bin").is_file():
        return None
    m = evaluate_split(model, run_dir / "tokens", "val", num_batches=20)
    return {k: float(m[k]) for k in ("loss", "perplexity", "bpc") if k in m}


def chat_answers(models: dict[str, tuple[Any, Any]], prompts: list[str] = SFT_PROMPTS) -> list[dict[str, Any]]:
    """Greedy chat replies of each model to the same prompts: [{prompt, replies: {model: reply}}]."""
    from ..infer.generate import GenerationConfig, TextGenerator

    cfg = GenerationConfig(do_sample=False, max_new_tokens=32)
    gens = {name: TextGenerator(m, tok) for name, (m, tok) in models.items()}
    return [{"prompt": p, "replies": {name: g.chat([{"role": "user", "content": p}], cfg) for name, g in gens.items()}}
            for p in prompts]


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


def skill_items(run_dir: Path, cfg: EvalConfig) -> list:
    """The held-out (test split) skill problems every model is scored on: the run's data/skills/test.jsonl (what
    notebook 01 wrote, or you edited), at most skills_per_family per family; made afresh when the run has none."""
    from ..data.skills import SKILLS_DIR, load_run_skills, make_skills

    if (run_dir / "data" / SKILLS_DIR / "test.jsonl").is_file():
        return load_run_skills(run_dir / "data", "test", per_family=cfg.skills_per_family)
    return make_skills("test", cfg.skills_per_family, seed=cfg.skills_seed, lang=cfg.skills_lang)


def _skills(run_dir: Path, loaded: dict[str, tuple[Any, Any]], identities: dict[str, dict], cfg: EvalConfig,
            progress: Callable[[str], None]) -> dict[str, dict]:
    from .skills import evaluate_run_skills

    settings = {"samples": cfg.skills_samples, "temperature": cfg.skills_temperature,
                "max_new_tokens": cfg.skills_max_new_tokens, "batch_size": cfg.skills_batch_size,
                "seed": cfg.skills_seed, "sample_per_family": cfg.skills_sample_per_family}
    models = {name: (m, tok, identities[name]["sha256"]) for name, (m, tok) in loaded.items()}
    return evaluate_run_skills(run_dir, models, skill_items(run_dir, cfg), settings, progress=progress)


def _load_models(run_dir: Path, models: dict[str, Path], cfg: EvalConfig, device: torch.device
                 ) -> tuple[dict[str, tuple[Any, Any]], dict[str, dict]]:
    """The loaded models (the untrained baseline first) and their identities (path, sha256, mtime)."""
    main = main_model(models)
    loaded = {name: _load(path, device) for name, path in models.items()}
    identities = {name: checkpoint_identity(path) for name, path in models.items()}
    if cfg.untrained_baseline and main:
        first = models.get("pretrain", models[main])
        seed = run_seed(first)
        base = untrained_like(loaded[main][0], seed)
        loaded = {UNTRAINED: (base, loaded[main][1]), **loaded}
        identities = {UNTRAINED: untrained_identity(base, seed), **identities}
    return loaded, identities


def _benchmark_models(run_dir: Path, loaded: dict[str, tuple[Any, Any]], cfg: EvalConfig, results: dict[str, Any],
                      progress: Callable[[str], None]) -> None:
    sets = _cloze_sets(run_dir, cfg)
    user = load_benchmarks(cfg.eval_data, cfg.max_items) if cfg.eval_data else []
    items_by_bench = {bench: items for bench, items, _ in sets}
    for b in user:
        items_by_bench[f"{b.kind}/{b.name}"] = b.items
    for kind in {b.kind for b in user}:
        mine = [b for b in user if b.kind == kind]
        if len(mine) > 1:
            items_by_bench[f"{kind} (all {len(mine)})"] = [it for b in mine for it in b.items]
    for i, (name, (model, tok)) in enumerate(loaded.items(), 1):
        t0 = time.perf_counter()
        mine = []
        for bench, items, chat in sets:
            mine.append(_row(bench, name, evaluate_items(model, tok, items, "cloze", chat, cfg.num_fewshot)))
        if user:
            mine += score_user_benchmarks(model, tok, user, cfg, name)
        results["benchmarks"] += mine
        scores = ", ".join(f"{r['benchmark']} {r['accuracy']:.3f} (n={r['n']}, random {r['random']:.3f})" for r in mine)
        progress(f"benchmarks [{i}/{len(loaded)}] {name:<10} {scores or 'no benchmark'} "
                 f"({time.perf_counter() - t0:.0f} s)")
        if name != UNTRAINED:
            results["val"][name] = val_metrics(model, run_dir)
    results["flags"] = flag_biased(results["benchmarks"], items_by_bench)
    for msg in results["flags"]:
        logger.warning("%s", msg)
        progress(f"WARNING {msg}")


def evaluate_run(run_dir: str | Path, cfg: EvalConfig | None = None,
                 progress: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Evaluate every model of a run (see the module docstring); writes and returns runs/<run>/eval/results.json."""
    from ..devices import pick_device

    cfg = cfg or EvalConfig()
    cfg.validate()
    run_dir = Path(run_dir)
    models = run_models(run_dir, cfg.checkpoint)
    results: dict[str, Any] = {"models": {}, "main_model": main_model(models), "config": cfg.to_dict(),
                               "benchmarks": [], "flags": [], "val": {}, "chat_answers": [], "skills": {},
                               "generation": None, "written_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not models:
        logger.warning("%s: no trained model (pretrain/final_model or sft/final_model); nothing to evaluate", run_dir)
    else:
        loaded, results["models"] = _load_models(run_dir, models, cfg, pick_device(cfg.device))
        progress(f"evaluating {len(loaded)} models: {', '.join(loaded)}")
        _benchmark_models(run_dir, loaded, cfg, results, progress)
        chat = {k: v for k, v in loaded.items() if k != UNTRAINED}
        if chat:
            results["chat_answers"] = chat_answers(chat)
        if cfg.skills:
            by_stage = _skills(run_dir, loaded, results["models"], cfg, progress)
            results["skills"] = {k: v["mean"] for k, v in by_stage.items()}
        main = results["main_model"]
        results["generation"] = dict(generation_speed(*loaded[main], cfg.speed_new_tokens), model=main)
    atomic_write_json(run_dir / RESULTS, results)
    return results


def config_of(results: dict[str, Any] | None) -> EvalConfig:
    """The EvalConfig a results.json was made with (fields this version does not know are dropped)."""
    known = EvalConfig.__dataclass_fields__
    return EvalConfig(**{k: v for k, v in ((results or {}).get("config") or {}).items() if k in known})
