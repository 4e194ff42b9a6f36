"""What a run directory says about itself, read from the files each stage wrote (nothing is recomputed here).

Each reader returns None when its stage did not run, so the report card can say so instead of leaving a gap.
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def data_facts(run_dir: Path) -> dict[str, Any] | None:
    """Kept documents and characters per split, rejects by reason (data/stats.json, notebook 01)."""
    stats = read_json(run_dir / "data" / "stats.json")
    if stats is None:
        return None
    return {"records": stats.get("records"), "kept": stats.get("kept", {}), "chars": stats.get("chars", {}),
            "rejected": stats.get("rejected", {}), "rejected_total": stats.get("rejected_total", 0),
            "plots": sorted(str(p.relative_to(run_dir)) for p in (run_dir / "data" / "plots").glob("*.png"))}


def tokenizer_facts(run_dir: Path) -> dict[str, Any] | None:
    """Vocabulary size and characters per token of each split (tokens/meta.json, notebook 02)."""
    meta = read_json(run_dir / "tokens" / "meta.json")
    if meta is None:
        return None
    splits = {}
    for name, s in (meta.get("splits") or {}).items():
        if s.get("num_tokens"):
            splits[name] = {"tokens": s["num_tokens"], "chars": s.get("num_chars"),
                            "chars_per_token": (s.get("num_chars") or 0) / s["num_tokens"]}
    return {"vocab_size": meta.get("vocab_size"), "splits": splits}


def model_facts(folder: Path) -> dict[str, Any] | None:
    """Shape and parameter count of a checkpoint folder's config.json."""
    cfg = read_json(folder / "config.json")
    if cfg is None:
        return None
    from ..config import ModelConfig

    shape = ModelConfig.from_dict(cfg["model"])
    return {"parameters": shape.num_params(), **{k: getattr(shape, k) for k in
            ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len")}}


def training_facts(stage_dir: Path) -> dict[str, Any] | None:
    """Steps, losses, throughput and MFU of a training stage (metrics.jsonl, notebooks 03 / 04)."""
    from ..ui.plots import read_metrics

    records = read_metrics(stage_dir / "metrics.jsonl")
    if not records:
        return None
    steps = [r for r in records if "loss" in r and "step" in r]
    evals = [r for r in records if r.get("val_loss") is not None]
    speed = [r for r in records if r.get("tokens_per_s")]
    out: dict[str, Any] = {"steps": steps[-1]["step"] if steps else 0,
                           "first_loss": steps[0]["loss"] if steps else None,
                           "final_loss": steps[-1]["loss"] if steps else None,
                           "tokens_seen": max((r.get("tokens_seen", 0) for r in records), default=0),
                           "elapsed_s": max((r.get("elapsed_s", 0) for r in records), default=0)}
    if evals:
        out.update(first_val_loss=evals[0]["val_loss"], val_loss=evals[-1]["val_loss"], val_step=evals[-1]["step"],
                   val_bpc=evals[-1].get("val_bpc"))
    if speed:
        last = speed[-1]
        out.update(tokens_per_s=last["tokens_per_s"], mfu=last.get("mfu"), memory_mb=last.get("memory_mb"),
                   trained_tokens_per_s=last.get("trained_tokens_per_s"),
                   mfu_peak=last.get("mfu_peak"), peak_gflops=last.get("peak_gflops"))  # the peak MFU is against
    run_cfg = read_json(stage_dir / "run_config.json") or {}
    out["params"] = run_cfg.get("params") or {}
    return out


def samples_text(run_dir: Path, max_lines: int = 40) -> str | None:
    path = run_dir / "samples.md"
    if not path.is_file():
        return None
    body = path.read_text(encoding="utf-8").split("## Samples", 1)[-1].strip().splitlines()
    return "\n".join(body[:max_lines])


def git_commit(root: Path) -> str:
    """The repository's commit (with '+ local changes' when the tree differs from it), or 'unknown'."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + (" + local changes" if dirty else "")) if sha else "unknown"


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report card shows, per stage (None for a stage that did not run)."""
    from ..params import repo_root

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    from .runner import RESULTS, stale_models
    from .skills import skills_by_stage

    models = {s: model_facts(run_dir / s / "final_model") for s in ("pretrain", "sft")}
    results = read_json(run_dir / RESULTS)
    return {"run_dir": str(run_dir), "git": git_commit(repo_root()), "data": data_facts(run_dir),
            "tokenizer": tokenizer_facts(run_dir), "model": models["sft"] or models["pretrain"],
            "pretrain": training_facts(run_dir / "pretrain"), "sft": training_facts(run_dir / "sft"),
            "align": training_facts(run_dir / "align"), "align_summary": read_json(run_dir / "align" / "align_summary.json"),
            "rl": training_facts(run_dir / "rl"), "eval": results, "stale": stale_models(run_dir, results),
            "skills": skills_by_stage(run_dir), "samples": samples_text(run_dir)}


def headline(facts: dict[str, Any]) -> dict[str, float | int | None]:
    """The numbers two runs are compared by (None where a stage did not run)."""
    def get(*keys):
        v: Any = facts
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return v

    out: dict[str, Any] = {
        "documents kept (train)": get("data", "kept", "train"), "documents rejected": get("data", "rejected_total"),
        "chars/token (val)": get("tokenizer", "splits", "val", "chars_per_token"),
        "parameters": get("model", "parameters"),
        "pretrain steps": get("pretrain", "steps"), "pretrain final loss": get("pretrain", "final_loss"),
        "pretrain val loss": get("pretrain", "val_loss"), "pretrain val bits/char": get("pretrain", "val_bpc"),
        "pretrain tokens/s": get("pretrain", "tokens_per_s"), "pretrain MFU": get("pretrain", "mfu"),
        "sft steps": get("sft", "steps"), "sft val loss": get("sft", "val_loss"),
        "generation tokens/s": get("eval", "generation", "tokens_per_s"),
    }
    for r in get("eval", "benchmarks") or []:
        if r["model"] == get("eval", "main_model") or (r["model"] == "pretrain" and r["benchmark"] == "cloze"):
            out[f"{r['benchmark']} accuracy ({r['model']})"] = r["accuracy"]
    for stage, mean in (get("eval", "skills") or {}).items():
        out[f"skills pass@1 ({stage})"] = mean.get("pass@1")
    return out
