"""`make demo`: run notebooks 01 -> 08 with papermill on one config (06, which scores every stage the run has, runs
last so that it sees 07's and 08's models), then say where everything is, and end with the skills table per stage,
the report card's path and the demo model's cloze accuracy against random.

    python -m minigpt.demo --config tiny --run-dir runs/demo
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .params import repo_root

logger = logging.getLogger(__name__)

NOTEBOOKS = ("01_data_clean", "02_tokenizer", "03_pretrain", "04_sft", "05_generate", "07_align", "08_rl", "06_evaluate")


def run_notebooks(config: str, run_dir: Path, notebooks: tuple[str, ...] = NOTEBOOKS, extra: dict | None = None,
                  timeout: int = 3600) -> list[Path]:
    """Execute the notebooks in order (each reads what the one before wrote); return the executed copies."""
    import papermill as pm

    root = repo_root()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = []
    for name in notebooks:
        t = time.perf_counter()
        dst = out_dir / f"{name}.ipynb"
        logger.info("[demo] %s ...", name)
        pm.execute_notebook(
            str(root / "notebooks" / f"{name}.ipynb"), str(dst),
            parameters={"config": config, "run_dir": str(run_dir), **(extra or {})},
            cwd=str(root), kernel_name="python3", progress_bar=False, execution_timeout=timeout,
        )
        logger.info("[demo] %s done in %.0fs -> %s", name, time.perf_counter() - t, dst)
        executed.append(dst)
    return executed


def summary(run_dir: Path) -> str:
    """Where each stage's outputs are, the pretraining val loss, and the first generated samples."""
    lines = [f"\nEverything is under {run_dir}/:"]
    for rel, what in [
        ("notebooks/", "the executed notebooks (open them to see plots and samples)"),
        ("data/", "cleaned train/val/sft JSONL, stats.json, rejects.jsonl, plots/"),
        ("tokenizer/", "tokenizer.json + tokenizer_config.json (HF-loadable, ChatML template)"),
        ("tokens/", "train.bin / val.bin token files + meta.json"),
        ("pretrain/", "checkpoints, final_model/, metrics.jsonl, plots/"),
        ("sft/", "the chat model: final_model/, metrics.jsonl, plots/"),
        ("data/skills/", "the built-in skill problems: train, val and test JSONL"),
        ("align/", "the DPO-aligned model (notebook 07): final_model/, metrics.jsonl, plots/"),
        ("rl/", "the GRPO model (notebook 08): final_model/, metrics.jsonl, rl_summary.json, plots/"),
        ("samples.md", "generated samples with the parameters used"),
        ("hf/", "the model exported as a transformers folder (Qwen3 layout for tiny's QK-norm)"),
        ("eval/", "benchmark items (cloze.jsonl, cloze_chat.jsonl), results.json, skills.json"),
        ("report.md", "the report card (PNGs beside it)"),
    ]:
        mark = "ok " if (run_dir / rel).exists() else "-- "
        lines.append(f"  {mark}{rel:<12} {what}")
    metrics = run_dir / "pretrain" / "metrics.jsonl"
    if metrics.is_file():
        evals = [json.loads(l) for l in metrics.read_text(encoding="utf-8").splitlines() if '"val_loss"' in l]
        if evals:
            lines.append(f"\npretrain val loss: {evals[0]['val_loss']:.3f} (step {evals[0]['step']}) -> "
                         f"{evals[-1]['val_loss']:.3f} (step {evals[-1]['step']})"
                         + (f", {evals[-1]['val_bpc']:.3f} bits/char" if "val_bpc" in evals[-1] else ""))
    samples = run_dir / "samples.md"
    if samples.is_file():
        text = samples.read_text(encoding="utf-8")
        body = text.split("## Samples", 1)[-1].strip().splitlines()
        lines.append("\nGenerated samples (all of them, with the parameters used, in samples.md):")
        lines += ["  " + l for l in body[:16] if l.strip()]
    return "\n".join(lines)


def closing_lines(run_dir: Path) -> str:
    """The report card's path and the run's cloze accuracy against random (the last lines of `make demo`)."""
    from .eval.skills import format_skills_table, skills_by_stage

    skills = skills_by_stage(run_dir)
    table = ("\nbuilt-in skills, held-out test problems, greedy pass@1 [95% interval] per stage:\n"
             + format_skills_table(skills)) if skills else ""
    results = run_dir / "eval" / "results.json"
    if not results.is_file():
        return table + f"\nreport card: not written (no {results}; notebook 06 writes it)"
    data = json.loads(results.read_text(encoding="utf-8"))
    lines = [table + f"\nreport card: {run_dir / 'report.md'}"]
    for r in data.get("benchmarks", []):
        if r["benchmark"] == "cloze" and r["model"] in (data.get("main_model"), "pretrain", "untrained"):
            lo, hi = r["ci95"]
            lines.append(f"cloze accuracy ({r['model']}): {r['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}, "
                         f"{r['n']} items) vs random {r['random']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.demo", description=__doc__)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--run-dir", default="runs/demo")
    ap.add_argument("--notebooks", nargs="+", default=list(NOTEBOOKS), metavar="NAME",
                    help="which notebooks, in order (e.g. --notebooks 07_align after a finished demo run: DPO on it)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    run_dir = Path(args.run_dir)
    run_dir = (run_dir if run_dir.is_absolute() else repo_root() / run_dir).resolve()
    t = time.perf_counter()
    try:
        run_notebooks(args.config, run_dir, tuple(args.notebooks))
    except Exception as e:  # papermill has already written the failing notebook
        print(f"[demo] failed: {type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
        return 1
    print(summary(run_dir))
    print(f"\n[demo] total {time.perf_counter() - t:.0f}s")
    print(closing_lines(run_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
