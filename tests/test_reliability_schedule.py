"""A short run decays its learning rate (issue 31, item 11): `-p config tiny -p max_steps 20` used to keep
tiny's warmup of 60 steps cut to 20, so the whole run was warmup and its LR ended at the peak. A preset's
warmup is now scaled to at most a tenth of an explicit max_steps, logged once; explicit values are kept."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.data.datasets import WindowSampler, sequential_windows
from minigpt.params import load_params
from minigpt.train.schedules import lr_at, warmup_for_run
from minigpt.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_warmup_for_run():
    assert [warmup_for_run(60, n) for n in (20, 2, 600, 1000, 0)] == [2, 0, 60, 60, 60]


def test_tiny_with_max_steps_20_resolves_a_short_warmup(caplog):
    with caplog.at_level(logging.WARNING, logger="minigpt.params"):
        P = load_params("pretrain", {"config": "tiny", "max_steps": 20})
    assert (P.warmup_steps, P.max_steps, P.lr_scheduler) == (2, 20, "wsd")
    lines = [r.getMessage() for r in caplog.records if "warmup_steps=" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("warmup_steps=60 from ") and "using warmup_steps=2" in lines[0]
    # explicit warmup, or both from the same preset section, are kept
    assert load_params("pretrain", {"config": "tiny", "max_steps": 20, "warmup_steps": 10}).warmup_steps == 10
    assert load_params("pretrain", {"config": "tiny"}).warmup_steps == 60
    ci = load_params("pretrain", {"config": "ci"})
    assert (ci.warmup_steps, ci.max_steps) == (5, 30)


def test_the_lr_sequence_of_a_20_step_wsd_run_decays_to_min_lr(tmp_path):
    """The tiny preset at max_steps 20 (its resolved schedule, its TrainConfig) on a real Trainer: the logged LRs
    warm up for 2 steps, hold the peak, decay over the last 4 (WSD's last 20 %), and the schedule is at min_lr
    at step 20."""
    P = load_params("pretrain", {"config": "tiny", "max_steps": 20})
    s = P.build(TrainConfig).schedule
    peak, low = P.learning_rate, P.min_lr
    cfg = TrainConfig.from_flat(learning_rate=peak, min_lr=low, max_steps=20, warmup_steps=s.warmup_steps,
                                lr_scheduler=s.lr_scheduler, decay_fraction=s.decay_fraction, batch_size=2, seq_len=16,
                                eval_interval=100, num_eval_batches=1, save_interval=100, log_interval=1,
                                plot_loss=False, progress_bar=False, seed=0)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=16))
    data = np.random.default_rng(0).integers(0, 64, 2000).astype(np.uint16)
    Trainer(model, cfg, WindowSampler(data, 2, 16, seed=0), sequential_windows(data, 2, 16, 1), tmp_path / "out").fit()
    logged = [r["lr"] for r in map(json.loads, (tmp_path / "out" / "metrics.jsonl").read_text().splitlines())
              if r.get("lr") is not None and not r.get("skipped")]
    assert len(logged) == 20
    assert logged[0] == pytest.approx(peak / 2) and logged[1:16] == [pytest.approx(peak)] * 15
    decay = logged[16:]
    assert all(a > b for a, b in zip(decay, decay[1:])) and decay[-1] == pytest.approx(low + (peak - low) * 0.25)
    end = lr_at(20, learning_rate=peak, min_lr=low, warmup_steps=s.warmup_steps, max_steps=20,
                lr_scheduler=s.lr_scheduler, decay_fraction=s.decay_fraction)
    assert end == pytest.approx(low)
