"""Run a command and print how long it took: `python -m minigpt.ci_timer LABEL -- CMD ...` (CI timing per part)."""
from __future__ import annotations

import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: python -m minigpt.ci_timer LABEL -- COMMAND ...", file=sys.stderr)
        return 2
    i = argv.index("--")
    label, cmd = " ".join(argv[:i]), argv[i + 1:]
    t = time.perf_counter()
    rc = subprocess.call(cmd)
    print(f"[time] {label}: {time.perf_counter() - t:.0f}s (exit {rc})", flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
