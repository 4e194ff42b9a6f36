"""One run of a sweep, in its own process: `python -m minigpt.experiment.run_one --params P.json --result R.json`.

Trains with the resolved pretraining parameters in P.json (written by the runner) and writes R.json atomically
at the end: the fit result, the validation curve (val BPC at each evaluation with the training time there),
tokens/s over training time, and the peak resident memory. It exits when its parent (the runner) dies, so a
killed sweep leaves no training process behind.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


class Curve:
    """Trainer callback: the evaluation points, and the largest resident memory seen (psutil)."""

    def __init__(self) -> None:
        import psutil

        self.points: list[dict[str, Any]] = []
        self.proc = psutil.Process()
        self.rss_mb = 0.0

    def on_log(self, trainer, rec: dict[str, Any]) -> None:
        self.rss_mb = max(self.rss_mb, self.proc.memory_info().rss / 2**20)
        if "val_loss" in rec:
            self.points.append({k: rec[k] for k in ("step", "train_s", "tokens_seen", "val_loss", "val_bpc") if k in rec})


def exit_with_parent(interval_s: float = 0.5) -> None:
    """A daemon thread that ends this process when its parent is gone (the runner was killed)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(3)
            time.sleep(interval_s)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def train_one(params: dict[str, Any]) -> dict[str, Any]:
    """Train one recipe/seed from resolved parameters; the record the sweep keeps."""
    from ..devices import peak_rss_mb
    from ..params import Params, coerce, registry
    from ..train.pretrain import build_pretrain_trainer

    reg = registry("pretrain")
    P = Params({k: (coerce(k, v, reg[k][0], "run parameters") if k in reg and v is not None else v)
                for k, v in params.items()})
    P["run_dir"] = Path(P["run_dir"])
    curve = Curve()
    trainer = build_pretrain_trainer(P, callbacks=[curve])
    result = trainer.fit()
    train_s = max(result["train_s"], 1e-9)
    return {
        "steps": result["step"], "stop_reason": result["stop_reason"], "train_s": result["train_s"],
        "wall_s": result["elapsed_s"], "tokens_seen": result["tokens_seen"],
        "tokens_per_s": result["tokens_seen"] / train_s, "peak_rss_mb": max(curve.rss_mb, peak_rss_mb()),
        "dtype": str(trainer.dtype).replace("torch.", ""), "params": trainer.model_cfg.num_params(),
        "curve": curve.points, "final_val_bpc": curve.points[-1].get("val_bpc") if curve.points else None,
        "final_val_loss": curve.points[-1]["val_loss"] if curve.points else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.experiment.run_one", description=__doc__)
    ap.add_argument("--params", required=True, help="JSON file of resolved pretraining parameters")
    ap.add_argument("--result", required=True, help="where the run's record goes (JSON)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    exit_with_parent()
    from ..atomic import atomic_write_json

    params = json.loads(Path(args.params).read_text(encoding="utf-8"))
    record = train_one(params)
    atomic_write_json(args.result, record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
