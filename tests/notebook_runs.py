"""Run notebooks 01 -> 07 with papermill into one run directory, once per pytest process.

Shared by tests/test_notebooks.py and tests/test_browser.py: the notebooks depend on each other, so they run in
order, in one directory, never in parallel. `MINIGPT_TEST_RUN_DIR` may name a finished run made with the same
config (e.g. the one nbval just wrote); the browser test then uses a copy of it instead of running 01 -> 07 again.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from notebook_tools import NOTEBOOKS  # 01 -> 07, the chain nbval runs too
CONFIG = "ci"

_runs: dict[str, Path] = {}


def execute(run_dir: Path, config: str = CONFIG, names=NOTEBOOKS, timeout: int = 900) -> dict[str, Path]:
    """papermill each notebook in order; returns name -> executed copy (under run_dir/notebooks)."""
    import papermill as pm

    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = {}
    for name in names:
        t = time.perf_counter()
        dst = out_dir / f"{name}.ipynb"
        pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(dst),
                            parameters={"config": config, "run_dir": str(run_dir)},
                            cwd=str(ROOT), kernel_name="python3", progress_bar=False, execution_timeout=timeout)
        print(f"[papermill] {name}: {time.perf_counter() - t:.0f}s", flush=True)
        executed[name] = dst
    return executed


def executed_run(config: str = CONFIG) -> Path:
    """A run directory made by this process's papermill run of all the notebooks (made on first use)."""
    if config not in _runs:
        run_dir = Path(tempfile.mkdtemp(prefix=f"minigpt-nb-{config}-")) / "run"
        execute(run_dir, config)
        _runs[config] = run_dir
    return _runs[config]


def is_complete(run_dir: Path) -> bool:
    return all((run_dir / p).exists() for p in ("tokenizer/tokenizer.json", "tokens/meta.json",
                                                 "pretrain/final_model", "sft/final_model"))


def prepared_run(dest: Path, config: str = CONFIG) -> Path:
    """A private copy of a finished run (tests may write into it): $MINIGPT_TEST_RUN_DIR, this process's run, or a new one."""
    given = os.environ.get("MINIGPT_TEST_RUN_DIR")
    src = None
    if given and is_complete(Path(given)):
        src = Path(given)
    elif config in _runs:
        src = _runs[config]
    else:
        src = executed_run(config)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("notebooks", "hf"))
    return dest
