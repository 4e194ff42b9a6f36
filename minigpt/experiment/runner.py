"""Run a sweep: prepare the shared corpus once, then each (recipe, seed) in its own fresh process, one at a time,
each for the same training-time budget. After every run its record is added to `<out>/results.json` (an atomic
rewrite). A sweep started again skips the runs recorded there and re-does, from the start, a run that was cut
short (its folder is cleared first): runs are time-budgeted, so a fresh start is the fair one.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_write_json
from ..data.jsonl import read_json_file
from ..params import jsonable, load_params, repo_root
from ..train.run_lock import RunLock
from .sweep import Sweep

logger = logging.getLogger(__name__)

# Pretraining parameters a sweep run gets unless the base or the recipe sets them: the budget alone stops it,
# checkpoints only at the end (their time is excluded from the budget but not from the sweep's wall clock).
RUN_DEFAULTS = {"max_steps": 0, "save_interval": 10**9, "save_minutes": 0.0, "sample_interval": 0,
                "plot_loss": False, "progress_bar": False, "show_widgets": False}


def default_out(sweep: Sweep) -> Path:
    return repo_root() / "runs" / "experiments" / sweep.name


def run_id(recipe: str, seed: int) -> str:
    return f"{recipe}-seed{seed}"


def prepare_corpus(sweep: Sweep) -> Path:
    """The sweep's data run folder, with cleaned data, tokenizer and token files made once with the base config."""
    run = sweep.data
    if (run / "tokens" / "meta.json").is_file() and (run / "tokenizer" / "tokenizer.json").is_file():
        return run
    from ..data.clean import CleanConfig, run_cleaning
    from ..data.packing import pack_corpus
    from ..data.tokenizer import TokenizerConfig, build_tokenizer
    from ..params import registry

    logger.info("preparing the sweep's corpus in %s (base config %s): cleaning, tokenizer, token files", run, sweep.config)
    given = sweep.data_overrides()
    P = load_params("clean", config=sweep.config, run_dir=str(run), **{k: v for k, v in given.items() if k in registry("clean")})
    if not (run / "data" / "val.jsonl").is_file():
        run_cleaning(P.build(CleanConfig), P.paths["data"])
    T = load_params("tokenizer", config=sweep.config, run_dir=str(run),
                    **{k: v for k, v in given.items() if k in registry("tokenizer")})
    tok = build_tokenizer(T.paths["data"], T.paths["tokenizer"], T.build(TokenizerConfig))
    pack_corpus(T.paths["data"], tok, T.paths["tokens"])
    return run


def run_params(sweep: Sweep, recipe: str, seed: int, folder: Path, budget_minutes: float) -> dict[str, Any]:
    """The resolved pretraining parameters of one run (base config < sweep defaults < base and recipe overrides)."""
    given = {**RUN_DEFAULTS, **sweep.pretrain_overrides(recipe)}
    P = load_params("pretrain", config=sweep.config, run_dir=str(sweep.data), seed=seed, max_minutes=budget_minutes,
                    output_dir=str(folder / "pretrain"), auto_resume=False, resume_from="", **given)
    return jsonable(P)


def read_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data = read_json_file(path, "the sweep's results (move it aside to start the sweep afresh)")
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: expected an object with a 'runs' list, as the sweep runner writes")
    return data


def _start_results(sweep: Sweep, path: Path, budget: float) -> dict[str, Any]:
    """The results so far, or a new record; a different budget in an earlier results.json is an error."""
    data = read_results(path)
    if data is None:
        return {"sweep": sweep.to_dict(), "budget_minutes": budget, "runs": []}
    if data.get("budget_minutes") != budget:
        raise ValueError(f"{path}: these results were run with budget_minutes={data.get('budget_minutes')}, not "
                         f"{budget}; pass another --out (or move the folder aside) to compare runs at equal budgets")
    return data


def run_sweep(sweep: Sweep, out: str | Path | None = None, minutes: float | None = None,
              progress: Callable[[str], None] | None = None, timeout_factor: float = 3.0) -> Path:
    """Run every (recipe, seed) not yet in `<out>/results.json`; return that file's path."""
    out = Path(out) if out else default_out(sweep)
    out.mkdir(parents=True, exist_ok=True)
    budget = float(minutes) if minutes else sweep.budget_minutes
    say = progress or logger.info
    with RunLock(out):  # one runner per sweep folder
        prepare_corpus(sweep)
        results_path = out / "results.json"
        results = _start_results(sweep, results_path, budget)
        done = {(r["recipe"], r["seed"]) for r in results["runs"]}
        todo = [rs for rs in sweep.runs() if rs not in done]
        say(f"sweep {sweep.name}: {len(sweep.runs())} runs of {budget:g} min, {len(done)} done, {len(todo)} to go")
        for i, (recipe, seed) in enumerate(todo, len(done) + 1):
            record = _run(sweep, recipe, seed, out / "runs" / run_id(recipe, seed), budget, timeout_factor)
            results["runs"].append(record)
            atomic_write_json(results_path, results)
            bpc = record.get("final_val_bpc")
            say(f"[{i}/{len(sweep.runs())}] {recipe} seed {seed}: "
                + (f"val BPC {bpc:.3f}" if bpc is not None else "no val BPC")
                + f" after {record['train_s'] / 60:.2f} min of training, {record['steps']} steps")
    return results_path


def _run(sweep: Sweep, recipe: str, seed: int, folder: Path, budget: float, timeout_factor: float) -> dict[str, Any]:
    """One run in a fresh process; a folder left by an interrupted attempt is cleared first."""
    if folder.exists():
        logger.warning("%s: an unfinished run from an earlier attempt; starting it again", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    params_file, result_file = folder / "params.json", folder / "result.json"
    atomic_write_json(params_file, run_params(sweep, recipe, seed, folder, budget))
    cmd = [sys.executable, "-m", "minigpt.experiment.run_one", "--params", str(params_file), "--result", str(result_file)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MINIGPT_ROOT": str(repo_root())}
    t = time.perf_counter()
    with open(folder / "train.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(repo_root()))
        try:
            rc = proc.wait(timeout=60 * budget * timeout_factor + 600)
        except BaseException:  # a timeout, Ctrl+C: the run is not left behind
            proc.kill()
            proc.wait()
            raise
    if rc != 0 or not result_file.is_file():
        tail = (folder / "train.log").read_text(encoding="utf-8", errors="replace")[-2000:]
        raise RuntimeError(f"{recipe} seed {seed}: the run failed (exit code {rc}); its log {folder / 'train.log'} "
                           f"ends with:\n{tail}")
    record = read_json_file(result_file, "one run's result object, as run_one writes it")
    if not isinstance(record, dict):
        raise ValueError(f"{result_file}: expected one run's result object, got {type(record).__name__}")
    return {"recipe": recipe, "seed": seed, "overrides": sweep.recipes[recipe], "budget_minutes": budget,
            "sweep_wall_s": time.perf_counter() - t, **record}
