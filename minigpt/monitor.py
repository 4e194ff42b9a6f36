"""Follow a running or finished training run from another terminal.

    python -m minigpt.monitor runs/demo            # follows runs/demo/pretrain (or sft), refreshing
    python -m minigpt.monitor runs/demo/sft --once # one snapshot and exit

It reads only files the trainer writes (metrics.jsonl, and the run's config for max_steps), so it works
the same whether training runs in a notebook, a terminal or under torchrun, and never disturbs it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from .ui.plots import read_metrics


def find_training_dir(path: str | Path) -> Path:
    """A folder holding metrics.jsonl: the path itself, or the most recently updated one below it."""
    p = Path(path)
    if (p / "metrics.jsonl").is_file():
        return p
    found = sorted(p.glob("*/metrics.jsonl"), key=lambda m: m.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{p}: no metrics.jsonl here or in a subfolder (is training running with this run_dir?)")
    return found[-1].parent


def planned_steps(train_dir: Path) -> int | None:
    """max_steps from the run's saved config (run_config.json, else the newest checkpoint's config.json)."""
    candidates = [train_dir / "run_config.json"]
    candidates += sorted(train_dir.glob("checkpoint_step_*/config.json"), key=lambda c: c.stat().st_mtime, reverse=True)
    candidates.append(train_dir / "final_model" / "config.json")
    for c in candidates:
        try:
            cfg = json.loads(c.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        steps = cfg.get("max_steps") or (cfg.get("train") or {}).get("max_steps")
        if steps:
            return int(steps)
    return None


def snapshot(train_dir: str | Path) -> dict[str, Any]:
    """The latest state of a run: step, loss, lr, tokens/s, val, ETA, and this machine's CPU/memory."""
    train_dir = Path(train_dir)
    records = read_metrics(train_dir / "metrics.jsonl")
    last = records[-1] if records else {}
    speed = next((r for r in reversed(records) if r.get("tokens_per_s")), {})
    val = next((r for r in reversed(records) if "val_loss" in r), {})
    total = planned_steps(train_dir)
    step = last.get("step", 0)
    eta = None
    if total and step and last.get("elapsed_s"):
        eta = last["elapsed_s"] / step * max(total - step, 0)
    age = time.time() - (train_dir / "metrics.jsonl").stat().st_mtime if (train_dir / "metrics.jsonl").exists() else None
    return {
        "dir": str(train_dir),
        "step": step,
        "max_steps": total,
        "loss": last.get("loss"),
        "lr": last.get("lr"),
        "tokens_per_s": speed.get("tokens_per_s"),
        "val_loss": val.get("val_loss"),
        "val_bpc": val.get("val_bpc"),
        "eta_s": eta,
        "seconds_since_update": age,
        "finished": (train_dir / "final_model" / "manifest.json").is_file() and (total is None or step >= total),
        "cpu_percent": psutil.cpu_percent(interval=0.2),
        "memory_percent": psutil.virtual_memory().percent,
        "train_memory_mb": last.get("memory_mb") or speed.get("memory_mb"),
    }


def format_snapshot(s: dict[str, Any]) -> str:
    def num(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    steps = f"{s['step']}/{s['max_steps']}" if s["max_steps"] else str(s["step"])
    eta = "done" if s["finished"] else (time.strftime("%H:%M:%S", time.gmtime(s["eta_s"])) if s["eta_s"] is not None else "-")
    return (f"step {steps} | loss {num(s['loss'], '.4f')} | val {num(s['val_loss'], '.4f')} | "
            f"lr {num(s['lr'], '.2e')} | {num(s['tokens_per_s'], '.0f')} tok/s | ETA {eta} | "
            f"CPU {s['cpu_percent']:.0f}% | mem {s['memory_percent']:.0f}%")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.monitor", description="Follow a minigpt training run.")
    ap.add_argument("run_dir", help="runs/NAME, or a training folder such as runs/NAME/pretrain")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    ap.add_argument("--once", action="store_true", help="print one snapshot and exit")
    ap.add_argument("--json", action="store_true", help="print snapshots as JSON lines")
    ap.add_argument("--timeout", type=float, default=0, help="stop following after this many seconds (0 = until done)")
    args = ap.parse_args(argv)
    start = time.time()
    train_dir = None
    while True:
        try:
            train_dir = train_dir or find_training_dir(args.run_dir)
            s = snapshot(train_dir)
            print(json.dumps(s) if args.json else format_snapshot(s), flush=True)
        except FileNotFoundError as e:
            if args.once:
                print(f"error: {e}", file=sys.stderr)
                return 2
            print(f"waiting: {e}", flush=True)
            s = None
        if args.once or (s and s["finished"]) or (args.timeout and time.time() - start > args.timeout):
            return 0
        try:
            time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
