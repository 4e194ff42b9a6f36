"""A real sweep (tiny shapes, seconds per run, each run its own process): results.json, the plot and the table;
and a runner killed with SIGKILL mid-sweep that, started again, continues at the next unfinished run."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import make_tiny_run
from minigpt.experiment import load_sweep, run_sweep, write_report

pytestmark = pytest.mark.slow

SWEEP = """base:
  config: ci
  eval_interval: 2
  num_eval_batches: 1
  batch_size: 4
  num_threads: 1
budget_minutes: 0.03
seeds: [7]
data: {data}
recipes:
{recipes}
"""


def sweep_file(tmp_path, recipes):
    data = make_tiny_run(tmp_path / "corpus")
    path = tmp_path / "sweep.yaml"
    path.write_text(SWEEP.format(data=data, recipes="".join(f"  {r}\n" for r in recipes)), encoding="utf-8")
    return path


def test_a_tiny_sweep_writes_results_plot_and_table(tmp_path):
    path = sweep_file(tmp_path, ["baseline: {}", "relu2: {mlp: relu2}"])
    said = []
    results_path = run_sweep(load_sweep(path), tmp_path / "out", progress=said.append)
    results = json.loads(results_path.read_text())
    assert [(r["recipe"], r["seed"]) for r in results["runs"]] == [("baseline", 7), ("relu2", 7)]
    for r in results["runs"]:
        assert r["stop_reason"] == "max_minutes" and r["steps"] > 0
        assert r["train_s"] == pytest.approx(1.8, abs=1.0)  # the budget, up to one step
        assert r["curve"] and all(p["val_bpc"] > 0 for p in r["curve"])
        assert [p["train_s"] for p in r["curve"]] == sorted(p["train_s"] for p in r["curve"])
        assert r["curve"][-1]["step"] == r["steps"] and r["final_val_bpc"] == r["curve"][-1]["val_bpc"]
        assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 50
    assert results["runs"][1]["overrides"] == {"mlp": "relu2"}
    assert said[0] == "sweep sweep: 2 runs of 0.03 min, 0 done, 2 to go"
    paths = write_report(tmp_path / "out")
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"
    table = paths["table"].read_text()
    assert "| baseline | 1 |" in table and "| relu2 | 1 |" in table
    # a second start has nothing left to do
    said.clear()
    run_sweep(load_sweep(path), tmp_path / "out", progress=said.append)
    assert said == ["sweep sweep: 2 runs of 0.03 min, 2 done, 0 to go"]
    with pytest.raises(ValueError, match="run with budget_minutes=0.03, not 0.05; pass another --out"):
        run_sweep(load_sweep(path), tmp_path / "out", minutes=0.05)


def _wait(cond, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_a_killed_sweep_resumes_at_the_next_unfinished_run(tmp_path):
    path = sweep_file(tmp_path, ["a: {}", "b: {learning_rate: 0.001}", "c: {qk_norm: true}"])
    out = tmp_path / "out"
    runner = subprocess.Popen([sys.executable, "-m", "minigpt.experiment", str(path), "--out", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def second_run_started():
            try:
                done = json.loads((out / "results.json").read_text())["runs"]
            except (OSError, ValueError):
                return False
            return len(done) == 1 and (out / "runs" / "b-seed7" / "params.json").is_file()

        assert _wait(second_run_started), "the runner never got to the second run"
        children = psutil.Process(runner.pid).children(recursive=True)
        assert children, "the second run's process is not running"
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=10)
    finally:
        if runner.poll() is None:
            runner.kill()
    first = json.loads((out / "results.json").read_text())["runs"]
    assert [(r["recipe"], r["seed"]) for r in first] == [("a", 7)]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "a run outlived its killed runner"
    said = []
    results = json.loads(run_sweep(load_sweep(path), out, progress=said.append).read_text())
    assert said[0] == "sweep sweep: 3 runs of 0.03 min, 1 done, 2 to go"
    assert [(r["recipe"], r["seed"]) for r in results["runs"]] == [("a", 7), ("b", 7), ("c", 7)]
    assert results["runs"][0] == first[0]  # the finished run is kept as it was
    assert results["runs"][1]["stop_reason"] == "max_minutes"  # the cut-short run was done again, whole
    assert (out / "runs" / "b-seed7" / "result.json").is_file()
