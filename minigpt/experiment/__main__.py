"""python -m minigpt.experiment params/sweeps/NAME.yaml [--out DIR] [--minutes M]: run (or resume) a sweep, then
write bpc_vs_time.png and results.md beside results.json and print the table."""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt.experiment", description=__doc__)
    ap.add_argument("sweep", help="a sweep file, or the name of one in params/sweeps/")
    ap.add_argument("--out", default=None, help="output folder (default runs/experiments/NAME)")
    ap.add_argument("--minutes", type=float, default=None, help="override the sweep's budget_minutes")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    from . import SweepError, load_sweep, run_sweep, write_report

    try:
        sweep = load_sweep(args.sweep)
    except SweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = run_sweep(sweep, args.out, args.minutes)
    paths = write_report(path.parent)
    print(paths["table"].read_text(encoding="utf-8"))
    print(f"plot: {paths['plot']}\nresults: {paths['results']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
