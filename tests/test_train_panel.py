"""The notebook-03 Start/Stop panel, driven from pytest without a kernel: the same handlers the buttons call."""
from __future__ import annotations

import math
import time

import pytest

from minigpt.params import load_params
from minigpt.ui.plots import LivePlot
from minigpt.train.pretrain import build_pretrain_trainer
from minigpt.ui.train_panel import TrainingPanel

from conftest import make_tiny_run

TINY = dict(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32, batch_size=2, eval_interval=5,
            num_eval_batches=1, save_steps=1000, log_interval=1, live_plot_interval=1, warmup_steps=1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("panel_run"))


def make_panel(run_dir, max_steps):
    P = load_params("pretrain", config="ci", run_dir=str(run_dir), max_steps=max_steps, **TINY)
    panel = TrainingPanel(P, lambda p: build_pretrain_trainer(p, callbacks=[LivePlot(every=1, target=panel.output)]))
    return panel


def test_controls_start_from_the_parameters(run_dir):
    panel = make_panel(run_dir, max_steps=7)
    assert panel.controls["max_steps"].value == 7
    assert panel.controls["batch_size"].value == 2
    assert math.isclose(panel.controls["learning_rate"].value, 3e-3)
    assert panel.start_button.description == "Start" and panel.stop_button.disabled
    for name in ("minigpt-start", "minigpt-stop", "minigpt-status", "minigpt-max-steps"):
        assert any(name in c._dom_classes for c in [panel.start_button, panel.stop_button, panel.status, *panel.controls.values()])
    panel.controls["max_steps"].value = 3
    assert panel.merged_params()["max_steps"] == 3 and panel.params["max_steps"] == 7
    # "0 = no limit" survives the sliders (a slider starting at 10 once turned the guard on at 10% CPU)
    assert panel.params["max_cpu"] == 0 and panel.merged_params()["max_cpu"] == 0
    assert panel.merged_params()["max_memory"] == 0


def test_start_runs_to_the_panel_max_steps(run_dir):
    panel = make_panel(run_dir, max_steps=1000)
    panel.controls["max_steps"].value = 4  # the widget wins over the parameters cell
    panel.start_button.click()
    result = panel.wait(timeout=120)
    assert panel.error is None, panel.error
    assert result["step"] == 4 and result["stop_reason"] == "max_steps"
    out = run_dir / "pretrain"
    assert (out / "final_model").is_dir() and (out / "checkpoint_step_4").is_dir()
    assert panel.status.value.startswith("done: step 4") and "checkpoint_step_4" in panel.status.value
    assert not panel.start_button.disabled and panel.stop_button.disabled
    # the live plot drew into the panel's Output: one image, replaced in place
    assert len(panel.output.outputs) == 1 and "image/png" in panel.output.outputs[0]["data"]


def test_stop_saves_and_returns(run_dir):
    panel = make_panel(run_dir, max_steps=100_000)
    panel.start_button.click()
    assert panel.thread.is_alive() and panel.start_button.disabled and not panel.stop_button.disabled
    deadline = time.time() + 120
    while panel.trainer.step < 3 and time.time() < deadline:
        time.sleep(0.05)
    assert panel.trainer.step >= 3, "training did not advance in the background thread"
    panel.start_button.click()  # a second Start while training is ignored, not a second thread
    panel.stop_button.click()
    result = panel.wait(timeout=60)
    assert not panel.thread.is_alive(), "Stop did not make fit() return"
    assert result["stop_reason"] == "stop requested" and 3 <= result["step"] < 100_000
    ckpt = run_dir / "pretrain" / f"checkpoint_step_{result['step']}"
    assert (ckpt / "model.safetensors").is_file()
    assert f"checkpoint_step_{result['step']}" in panel.status.value
    assert not panel.start_button.disabled and panel.stop_button.disabled


def test_bad_value_is_shown_in_the_panel(run_dir):
    panel = make_panel(run_dir, max_steps=5)
    panel.controls["max_steps"].value = -1
    panel.on_start()
    assert panel.thread is None and panel.error is not None
    assert panel.status.value.startswith("error:") and "max_steps" in panel.status.value
    assert not panel.start_button.disabled


def test_stop_checkpoint_survives_older_checkpoints(tmp_path, run_dir):
    """A fresh run in a folder that holds an older, longer run: the old run is archived, not mixed in,
    so pruning (which keeps the highest steps) cannot delete the new run's Stop checkpoint."""
    import shutil

    run = tmp_path / "run"
    for sub in ("tokenizer", "tokens"):
        shutil.copytree(run_dir / sub, run / sub)
    first = make_panel(run, max_steps=8)
    first.params["save_steps"] = 1  # an earlier run: keeps checkpoints 6, 7, 8 (keep_last_n_checkpoints=3)
    first.on_start(block=True)
    assert first.result["step"] == 8
    panel = make_panel(run, max_steps=100_000)
    panel.start_button.click()
    while panel.trainer.step < 1:
        time.sleep(0.01)
    panel.stop_button.click()
    result = panel.wait(timeout=60)
    assert result["step"] < 6
    assert (run / "pretrain" / f"checkpoint_step_{result['step']}").is_dir(), "the Stop checkpoint was pruned"
    archived = list((run / "pretrain" / "previous").glob("*/checkpoint_step_8"))
    assert len(archived) == 1 and (archived[0].parent / "metrics.jsonl").is_file()  # the old run is kept, aside
