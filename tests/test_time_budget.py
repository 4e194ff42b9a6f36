"""max_minutes: training stops at a training-time budget (evaluation, saving and sampling excluded), the learning
rate decays against that time and reaches min_lr at the budget, and a resumed run continues the clock.
A fake clock drives time: each training step takes 1 s, each evaluation 100 s."""
import json
import math

import numpy as np
import pytest
import torch

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.data.datasets import WindowSampler, sequential_windows
from minigpt.train.clock import TrainClock
from minigpt.train.schedules import TimeProgress, lr_at
from minigpt.train.trainer import Trainer

CFG = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32)
STEP_S, EVAL_S = 1.0, 100.0


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def make_trainer(tmp_path, clock, **kw):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CFG))
    cfg = TrainConfig.from_flat(**{**dict(learning_rate=1e-2, min_lr=1e-3, max_steps=0, max_minutes=10 / 60, batch_size=4,
                                warmup_steps=2, eval_interval=3, num_eval_batches=1, save_interval=4, save_minutes=0,
                                log_interval=1, plot_loss=False, seq_len=16, progress_bar=False, sample_interval=0),
                         **kw})
    data = np.tile(np.arange(16, dtype=np.uint16), 300)

    class TimedWindows(WindowSampler):
        def __next__(self):  # reading a step's batch takes STEP_S of the fake clock (one micro-batch a step)
            clock.now += STEP_S
            return super().__next__()

    trainer = Trainer(model, cfg, TimedWindows(data, 4, 16, seed=0), sequential_windows(data, 4, 16, 1),
                      tmp_path / "out", clock=clock)
    evaluate = trainer.evaluate

    def timed_eval():  # an evaluation takes EVAL_S: excluded from the budget
        clock.now += EVAL_S
        return evaluate()

    trainer.evaluate = timed_eval
    return trainer


def records(out):
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def test_budget_stops_training_and_excludes_evaluation(tmp_path):
    clock = FakeClock()
    trainer = make_trainer(tmp_path, clock)
    result = trainer.fit()
    # 10 s of budget at 1 s a step: 10 steps, although 4 evaluations (steps 3, 6, 9, 10) took 400 s more
    assert result["step"] == 10 and result["stop_reason"] == "max_minutes"
    assert result["train_s"] == pytest.approx(10.0)
    recs = records(tmp_path / "out")
    assert [r["step"] for r in recs if "val_loss" in r] == [3, 6, 9, 10]  # the last step is always evaluated
    assert [r["train_s"] for r in recs] == pytest.approx([float(s) for s in range(1, 11)])
    assert (tmp_path / "out" / "final_model" / "model.safetensors").is_file()


def test_lr_runs_against_time_and_reaches_min_lr_at_the_budget(tmp_path):
    clock = FakeClock()
    trainer = make_trainer(tmp_path, clock)
    trainer.fit()
    lrs = [r["lr"] for r in records(tmp_path / "out")]
    # warmup in steps (0.5, 1.0 of the peak), then cosine over the time left after warmup (2 s .. 10 s)
    expected = [1e-2 * 0.5, 1e-2] + [1e-3 + 9e-3 * 0.5 * (1 + math.cos(math.pi * (t - 2) / 8)) for t in range(2, 10)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert trainer.train_clock.over_budget()
    assert trainer.learning_rate() == pytest.approx(1e-3, rel=1e-12)  # at the budget: min_lr


@pytest.mark.parametrize("sched", ["cosine", "linear", "wsd", "polynomial", "cosine_with_restarts"])
def test_every_schedule_ends_at_min_lr_with_the_budget(sched):
    at = dict(learning_rate=1.0, min_lr=0.1, warmup_steps=5, max_steps=0, lr_scheduler=sched, lr_restarts=2)
    assert lr_at(50, **at, time=TimeProgress(600.0, 600.0, 30.0)) == pytest.approx(0.1)
    assert lr_at(50, **at, time=TimeProgress(31.0, 600.0, 30.0)) > 0.9  # just after warmup: near the peak


def test_wsd_decays_over_the_last_fraction_of_the_budget():
    at = dict(learning_rate=1.0, min_lr=0.0, warmup_steps=0, max_steps=0, lr_scheduler="wsd", decay_fraction=0.2)
    assert lr_at(9, **at, time=TimeProgress(79.0, 100.0)) == 1.0
    assert lr_at(9, **at, time=TimeProgress(90.0, 100.0)) == pytest.approx(0.5)


def test_with_max_steps_too_whichever_comes_first_stops(tmp_path):
    clock = FakeClock()
    result = make_trainer(tmp_path, clock, max_steps=6).fit()
    assert result["step"] == 6 and result["stop_reason"] == "max_steps"
    at = dict(learning_rate=1.0, min_lr=0.0, warmup_steps=0, max_steps=10, lr_scheduler="linear")
    # the schedule follows whichever is further along: 8 of 10 steps beats 20 of 100 s
    assert lr_at(8, **at, time=TimeProgress(20.0, 100.0)) == pytest.approx(0.2)


def test_resume_continues_the_clock(tmp_path):
    clock = FakeClock()
    first = make_trainer(tmp_path, clock)

    class StopAt4:
        def on_log(self, trainer, rec):
            if rec["step"] == 4:
                trainer.request_stop()

    first.callbacks.append(StopAt4())
    assert first.fit()["step"] == 4
    state = json.loads((tmp_path / "out" / "checkpoint_step_4" / "trainer_state.json").read_text())
    assert state["train_clock"] == {"train_time_s": pytest.approx(4.0), "warmup_end_s": pytest.approx(2.0)}
    clock.now += 5000.0  # the pause between the runs is not training
    second = make_trainer(tmp_path, clock, auto_resume=True)
    result = second.fit()
    assert result["step"] == 10 and result["train_s"] == pytest.approx(10.0)
    recs = records(tmp_path / "out")
    assert [r["step"] for r in recs] == list(range(1, 11))
    assert [r["train_s"] for r in recs] == pytest.approx([float(s) for s in range(1, 11)])


def test_a_bad_clock_in_a_checkpoint_is_named():
    with pytest.raises(ValueError, match=r"x/trainer_state.json: train_clock.train_time_s -3; expected a number"):
        TrainClock(1.0).load_state_dict({"train_time_s": -3}, "x/trainer_state.json")


def test_max_minutes_is_a_checked_training_parameter():
    from minigpt.params import load_params

    P = load_params("pretrain", {"config": "ci", "max_minutes": 0.5, "max_steps": 0})
    assert TrainConfig.from_flat(**{k: v for k, v in P.items() if k in TrainConfig.FIELD_GROUPS}).schedule.max_minutes == 0.5
    with pytest.raises(ValueError, match="max_minutes: expected a number of minutes >= 0"):
        TrainConfig.from_flat(max_minutes=-1.0).validate()
    with pytest.raises(ValueError, match="max_steps: expected a positive integer"):
        TrainConfig.from_flat(max_steps=0).validate()


def test_a_budgeted_run_estimates_by_its_budget(tmp_path, caplog):
    clock = FakeClock()
    with caplog.at_level("INFO", logger="minigpt.train.clock"):
        make_trainer(tmp_path, clock).fit()
    # wall seconds per step over steps 2-4, measured once: 1 s each plus step 3's 100 s evaluation
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("estimate:")]
    assert lines == ["estimate: 34.33 s/step; the run stops after 10 s of training time (max_minutes)"]
