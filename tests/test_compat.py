"""A run written by the previous layout (tests/fixtures/run_v1: flat TrainConfig names such as save_steps,
the fused CPU training path, since removed) still loads, resumes and continues the same way.

The fixture was made with load_params("pretrain", config="ci", ...) + build_pretrain_trainer(P).fit():
a 2-layer d32 model, 8 steps, a checkpoint every 4. It is copied to tmp_path before anything writes.

Tolerance: losses after resume are compared with rel 1e-4, not bitwise. The fixture was trained by the
model's fused fp32 CPU path, since removed; the reference model computes the same function
with a different summation order, so the last bits may differ.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

from minigpt.config import TrainConfig
from minigpt.params import load_params
from minigpt.train import checkpoint as ckpt
from minigpt.train import run_state
from minigpt.train.pretrain import build_pretrain_trainer

FIXTURE = Path(__file__).parent / "fixtures" / "run_v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
# The parameters the fixture was made with (its pretrain/run_config.json holds them too), under the old names.
MADE_WITH = dict(config="ci", d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32, max_steps=8, save_steps=4,
                 eval_interval=4, log_interval=1, batch_size=4, warmup_steps=2, plot_loss=False, progress_bar=False,
                 sample_interval=0, num_threads=1, dropout=0.0)


def fixture_losses() -> dict[int, float]:
    lines = (FIXTURE / "pretrain" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


@pytest.fixture
def run_copy(tmp_path):
    run = tmp_path / "run_v1"
    shutil.copytree(FIXTURE, run)
    return run


@pytest.mark.parametrize("folder", ["final_model", "checkpoint_step_4"])
def test_previous_checkpoints_load(folder):
    model, tokenizer, model_cfg = ckpt.load_checkpoint(FIXTURE / "pretrain" / folder)
    assert (model_cfg.d_model, model_cfg.n_layers, model_cfg.max_seq_len) == (32, 2, 32)
    assert tokenizer.encode(EXPECTED["prompt"]) == EXPECTED["prompt_ids"]
    if folder == "final_model":
        with torch.no_grad():
            logits, _ = model(torch.tensor([EXPECTED["prompt_ids"]]))
        head = logits[0, -1, :8].tolist()
        assert head == pytest.approx(EXPECTED["last_logits_head"], abs=1e-4)


def test_previous_flat_train_dicts_load():
    """run_config.json and config.json of the previous code hold a flat "train" dict with the earlier names."""
    for path in (FIXTURE / "pretrain" / "run_config.json", FIXTURE / "pretrain" / "checkpoint_step_4" / "config.json"):
        old = json.loads(path.read_text(encoding="utf-8"))["train"]
        assert "save_steps" in old and "disable_optimizations" in old
        cfg = TrainConfig.from_dict(old)
        cfg.validate()
        assert cfg.checkpoints.save_interval == old["save_steps"] == 4
        assert cfg.schedule.context_growth is old["dynamic_seq_length"] is False
        assert cfg.schedule.context_growth_from == old["min_seq_length"] == 64
        assert cfg.machine.disable_speedups is old["disable_optimizations"] is False
        assert cfg.optim.grad_clip == old["grad_clip"] == 1.0
        assert (cfg.optim.learning_rate, cfg.schedule.max_steps, cfg.schedule.warmup_steps) == (3e-3, 8, 2)
        assert TrainConfig.from_dict(cfg.to_flat()) == cfg


def test_auto_resume_picks_up_checkpoint_step_4_and_continues_like_the_previous_code(run_copy):
    P = load_params("pretrain", run_dir=str(run_copy), auto_resume=True, **MADE_WITH)
    trainer = build_pretrain_trainer(P)
    assert run_state.checkpoint_to_resume(trainer) == run_copy / "pretrain" / "checkpoint_step_4"
    result = trainer.fit()
    assert result["step"] == 8 and trainer.tokens_seen == 8 * 4 * 32
    resumed = {r["step"]: r["loss"] for r in map(json.loads, trainer.metrics_path.read_text().splitlines()) if "loss" in r}
    old = fixture_losses()
    assert sorted(resumed) == list(range(1, 9))  # steps 1-4 kept from the old log, 5-8 appended
    for step in range(1, 5):
        assert resumed[step] == old[step]  # the log up to the checkpoint is the old run's, untouched
    for step in range(5, 9):
        assert resumed[step] == pytest.approx(old[step], rel=1e-4), step
    assert not (FIXTURE / "pretrain" / "checkpoint_step_8").exists()  # the fixture itself is never written
