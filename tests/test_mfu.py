"""MFU against the measured matmul peak of the dtype a run uses, named in the metrics and the log; SFT's computed
and trained tokens per second, both logged."""
import json
import logging

import numpy as np
import pytest
import torch

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.data.datasets import WindowSampler
from minigpt.devices import cpu_has_native_bf16, measure_peak_flops
from minigpt.train.machine import matmul_peak
from minigpt.train.metrics import flops_per_token, format_metrics
from minigpt.train.sft import SFTTrainer
from minigpt.train.trainer import Trainer

MODEL = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32)


def _cfg(**kw):
    return TrainConfig.from_flat(**{**dict(learning_rate=3e-3, min_lr=3e-4, max_steps=3, batch_size=4, warmup_steps=1,
                                           eval_interval=100, num_eval_batches=1, save_interval=100, log_interval=1,
                                           plot_loss=False, seq_len=16, progress_bar=False, device="cpu"), **kw})


def _data():
    return np.random.default_rng(0).integers(0, 64, 3000).astype(np.uint16)


class PromptMasked(WindowSampler):
    """Windows whose first 12 of 16 targets carry no loss, as an SFT prompt's positions."""

    def __next__(self):
        x, y = super().__next__()
        y = y.clone()
        y[:, :12] = -100
        return x, y


def _records(path):
    return [json.loads(l) for l in open(path) if '"tokens_per_s"' in l]


def test_matmul_peak_names_its_dtype_and_is_measured_once():
    cpu = torch.device("cpu")
    flops, name = matmul_peak(cpu, torch.float32)
    assert name == "fp32" and flops == measure_peak_flops(cpu, torch.float32) > 1e6
    again, _ = matmul_peak(cpu, torch.float32)
    assert again == flops  # cached per process: one measurement, one denominator for the whole run


@pytest.mark.parametrize("dtype,name", [
    ("float32", "fp32"),
    pytest.param("bfloat16", "bf16", marks=pytest.mark.skipif(not cpu_has_native_bf16(),
                                                                reason="bf16 matmul is emulated on this CPU")),
])
def test_trainer_mfu_is_against_the_peak_of_its_dtype(tmp_path, caplog, dtype, name):
    torch.manual_seed(0)
    t = Trainer(GPT(ModelConfig(**MODEL)), _cfg(dtype=dtype), WindowSampler(_data(), 4, 16, seed=0), None, tmp_path / "o")
    with caplog.at_level(logging.INFO, logger="minigpt.train.trainer"):
        t.fit()
    peak = measure_peak_flops(torch.device("cpu"), getattr(torch, dtype))
    assert t.peak_dtype == name and t.peak_flops == peak
    recs = _records(t.metrics_path)
    assert len(recs) == 3
    for r in recs:
        assert r["mfu_peak"] == name and r["peak_gflops"] == pytest.approx(peak / 1e9)
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops_per_token(t.model_cfg, 16) / peak, rel=1e-9)
        assert r["trained_tokens_per_s"] == pytest.approx(r["tokens_per_s"], rel=1e-12)  # pretraining: every position
    assert f"measured {name} matmul peak of this machine" in caplog.text
    assert f"of the measured {name} peak" in caplog.text  # each metrics line names it too
    # the report card's training table names the same peak
    from minigpt.eval.facts import training_facts
    from minigpt.eval.report_card import _section_training

    lines: list[str] = []
    _section_training({"pretrain": training_facts(t.output_dir)}, tmp_path, lines)
    row = next(l for l in lines if l.startswith("| pretrain"))
    assert f"{recs[-1]['mfu']:.2%} of the measured {name} peak {peak / 1e9:,.0f} GFLOP/s" in row


def test_sft_logs_computed_and_trained_tokens(tmp_path):
    torch.manual_seed(0)
    t = SFTTrainer(GPT(ModelConfig(**MODEL)), _cfg(dtype="float32"), PromptMasked(_data(), 4, 16, seed=0), None,
                   tmp_path / "sft", kind="sft")
    t.fit()
    recs = _records(t.metrics_path)
    assert len(recs) == 3
    for r in recs:
        # 16 positions computed per row, 4 of them trained: the two rates differ by exactly that ratio
        assert r["tokens_per_s"] == pytest.approx(4 * r["trained_tokens_per_s"], rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * flops_per_token(t.model_cfg, 16) / t.peak_flops, rel=1e-9)
    assert t.tokens_seen == 3 * 4 * 4  # the trained-token count is unchanged
    line = format_metrics(recs[0])
    assert f"{recs[0]['tokens_per_s']:.0f} tok/s ({recs[0]['trained_tokens_per_s']:.0f} trained)" in line
    assert "MFU" in line and "of the measured fp32 peak" in line
