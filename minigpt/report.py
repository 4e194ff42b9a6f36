"""A system report: the machine, torch, the device and dtype
chosen (with the reason), and for a preset its parameter count and estimated training memory.

Also the report card's entry point (minigpt/eval/report_card.py):

    python -m minigpt.report RUN_DIR            # RUN_DIR/report.md, from what is on disk: evaluates the run first
                                                # when eval/results.json is missing or a stage changed since
    python -m minigpt.report RUN_A RUN_B        # RUN_B/compare.md: two runs side by side
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .config import ModelConfig
from .devices import system_info


def system_report(preset: str | None = None, device: str = "auto", dtype: str = "auto", batch_size: int = 8) -> str:
    """Human-readable report; printed at the top of notebook 03."""
    info = system_info(device, dtype)
    lines = ["== system =="]
    lines += [f"{k:>20}: {v}" for k, v in info.items()]
    if preset:
        from .devices import pick_device, pick_dtype
        from .train.memory import describe, estimate_train_memory

        cfg = ModelConfig.from_preset(preset)
        run_dtype = pick_dtype(dtype, pick_device(device))[0]
        # the trainer's own estimate (train/memory.py), with its default switches; the trainer logs the run's
        mem = estimate_train_memory(cfg, batch_size, cfg.max_seq_len, run_dtype)
        lines += ["== model ==",
                  f"{'preset':>20}: {preset}",
                  f"{'parameters':>20}: {cfg.num_params():,}",
                  f"{'weights':>20}: {4 * cfg.num_params() / 2 ** 20:.1f} MB",
                  f"{'training memory':>20}: ~{describe(mem)} at batch {batch_size} x {cfg.max_seq_len}, "
                  f"{str(run_dtype).replace('torch.', '')}, without activation checkpointing"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m minigpt.report RUN_DIR [RUN_B]`: the report card, or two runs compared."""
    ap = argparse.ArgumentParser(prog="python -m minigpt.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one run (report card) or two (comparison)")
    ap.add_argument("--no-eval", action="store_true",
                    help="never evaluate: a stage missing from eval/results.json is marked 'not evaluated yet'")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from .atomic import atomic_write_text
    from .eval.report_card import compare, write_report
    from .eval.facts import read_json
    from .eval.runner import RESULTS, config_of, evaluate_run, stale_models

    runs = [Path(r) for r in args.runs]
    if len(runs) > 2:
        ap.error(f"expected one or two run directories, got {len(runs)}")
    for r in runs:
        if not r.is_dir():
            ap.error(f"{r}: run directory not found")
    if len(runs) == 2:
        md = compare(*runs)
        atomic_write_text(runs[1] / "compare.md", md)
        print(md)
        print(f"wrote {runs[1] / 'compare.md'}")
        return 0
    try:  # a bad results.json, checkpoint or benchmark file: its message, no traceback
        results = read_json(runs[0] / RESULTS)
        stale = stale_models(runs[0], results)
        for name, why in stale.items():
            logging.getLogger(__name__).info("%s: %s", name, why)
        if not args.no_eval and (results is None or stale):
            evaluate_run(runs[0], config_of(results))  # with the settings of the last evaluation, if there was one
        print(write_report(runs[0]))
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
