"""Trainer behaviour on tiny models: schedules, accumulation, EMA, early stopping, NaN skipping, exact resume."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.data.datasets import WindowSampler, sequential_windows
from minigpt.devices import pick_dtype
from minigpt.train.schedules import lr_at
from minigpt.train.optim import EMA
from minigpt.train.trainer import Trainer

CFG = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32)


def tokens(n=4000, seed=0):
    # a learnable stream: a repeated pattern with noise, so loss has somewhere to go
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(16, dtype=np.uint16), n // 16 + 1)[:n]
    noise = rng.integers(0, 64, size=n).astype(np.uint16)
    return np.where(rng.random(n) < 0.1, noise, base).astype(np.uint16)


def make_trainer(tmp_path, max_steps=20, seed=0, guard=None, callbacks=(), **kw):
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**CFG))
    cfg = TrainConfig.from_flat(**{**dict(learning_rate=3e-3, min_lr=3e-4, max_steps=max_steps, batch_size=4, warmup_steps=2,
                                eval_interval=5, num_eval_batches=2, save_interval=5, log_interval=1, plot_loss=False,
                                seq_len=16, seed=seed, progress_bar=False), **kw})
    data = tokens()
    sampler = WindowSampler(data, cfg.optim.batch_size, 16, seed=seed)
    evals = sequential_windows(tokens(seed=1), 4, 16, 2)
    return Trainer(model, cfg, sampler, evals, tmp_path / "out", guard=guard, callbacks=callbacks)


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_log(self, trainer, rec):
        if rec["step"] == self.step:
            trainer.request_stop()


def losses(path):
    return [json.loads(l)["loss"] for l in open(path) if '"loss"' in l and '"skipped"' not in l]


@pytest.mark.parametrize("sched,step,expected", [
    ("cosine", 0, 0.1), ("cosine", 9, 1.0), ("cosine", 10, 1.0), ("cosine", 60, 0.55), ("cosine", 110, 0.1),
    ("linear", 60, 0.55), ("linear", 110, 0.1), ("polynomial", 60, 0.1 + 0.9 * 0.25),
    ("constant", 60, 1.0), ("cosine_with_restarts", 35, 0.55), ("cosine_with_restarts", 60, 1.0),
])
def test_schedule_values(sched, step, expected):
    lr = lr_at(step, learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, lr_scheduler=sched, lr_restarts=2)
    assert lr == pytest.approx(expected, abs=1e-9)


def test_decay_lr_false_keeps_peak():
    assert lr_at(100, learning_rate=0.5, min_lr=0.0, warmup_steps=10, max_steps=110, decay_lr=False) == 0.5


def test_dtype_on_this_cpu_is_fp32():
    dt, reason = pick_dtype("auto", torch.device("cpu"))
    from minigpt.devices import cpu_has_native_bf16
    if not cpu_has_native_bf16():
        assert dt == torch.float32 and "without native bf16" in reason


def test_grad_accumulation_equals_big_batch():
    torch.manual_seed(0)
    m1 = GPT(ModelConfig(**CFG))
    m2 = GPT(ModelConfig(**CFG))
    m2.load_state_dict(m1.state_dict())
    x = torch.randint(0, 64, (8, 16))
    y = torch.randint(0, 64, (8, 16))
    _, loss = m1(x, y)
    loss.backward()
    for i in range(4):
        _, l2 = m2(x[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
        (l2 / 4).backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        assert torch.allclose(p1.grad, p2.grad, atol=1e-5), n


def test_accumulation_steps_from_total_batch_size(tmp_path):
    t = make_trainer(tmp_path, total_batch_size=4 * 16 * 3)
    assert t.accumulation_steps == 3
    with pytest.raises(ValueError, match="total_batch_size"):
        make_trainer(tmp_path, total_batch_size=100)


def test_ema_arithmetic():
    lin = torch.nn.Linear(2, 1, bias=False)
    lin.config = None
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = EMA(lin, decay=0.9)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9 * 1 + 0.1 * 2))
    ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9 * 1.1 + 0.1 * 2))


def test_training_lowers_loss_and_writes_artifacts(tmp_path):
    t = make_trainer(tmp_path, max_steps=30, use_ema=True)
    result = t.fit()
    assert result["step"] == 30 and result["stop_reason"] == "max_steps"
    recs = [json.loads(l) for l in open(t.metrics_path)]
    evals = [r for r in recs if "val_loss" in r]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3
    assert "val_loss_ema" in evals[-1]
    final = tmp_path / "out" / "final_model"
    assert (final / "model.safetensors").is_file() and (final / "ema.safetensors").is_file()
    assert (final / "manifest.json").is_file()


def test_early_stopping_after_patience(tmp_path):
    # lr 0 (after a tiny warmup) means val loss cannot improve: stops after `patience` evals without improvement.
    # In fp32: under bf16 autocast a 1e-9 step can still flip the bf16 rounding of a weight and move the loss by 1e-5.
    t = make_trainer(tmp_path, max_steps=100, learning_rate=1e-9, min_lr=0.0, early_stopping=True, patience=3,
                     eval_interval=2, warmup_steps=1, dtype="float32")
    result = t.fit()
    assert result["stop_reason"] == "early stopping"
    # first eval sets the best; three more evals without improvement -> step 8
    assert result["step"] == 8


def test_nan_loss_skips_update_and_counts(tmp_path):
    t = make_trainer(tmp_path, max_steps=6)
    real_forward = t.model.forward
    calls = {"n": 0}

    def flaky(x, y=None, **kw):
        calls["n"] += 1
        logits, loss = real_forward(x, y, **kw)
        if calls["n"] == 3 and y is not None and t.model.training:
            loss = loss * float("nan")
        return logits, loss

    t.model.forward = flaky
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    recs = [json.loads(l) for l in open(t.metrics_path)]
    skipped = [r for r in recs if r.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["step"] == 2
    assert t.step == 6 and t.faults_total == 1
    assert any(not torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_consecutive_faults_stop_the_run(tmp_path):
    t = make_trainer(tmp_path, max_steps=50)
    real_forward = t.model.forward
    t.model.forward = lambda x, y=None, **kw: (real_forward(x, y, **kw)[0], torch.tensor(float("inf"), requires_grad=True))
    t.max_faults = 3
    result = t.fit()
    assert result["stop_reason"] == "numerical faults" and result["step"] == 0 and t.faults_total == 3


def test_exact_resume_is_bitwise(tmp_path):
    straight = make_trainer(tmp_path / "a", max_steps=12)
    straight.fit()
    first = make_trainer(tmp_path / "b", max_steps=12)
    first.callbacks.append(StopAt(6))  # interrupted half way; the stop leaves a step-6 checkpoint
    assert first.fit()["step"] == 6
    second = make_trainer(tmp_path / "b", max_steps=12, auto_resume=True)
    second.fit()
    assert second.step == 12
    assert losses(straight.metrics_path) == losses(second.metrics_path)  # bitwise: exact float equality
    for (k, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_stop_request_saves_and_returns(tmp_path):
    t = make_trainer(tmp_path, max_steps=1000)
    t.callbacks.append(StopAt(3))
    result = t.fit()
    assert result["stop_reason"] == "stop requested" and result["step"] == 3
    assert (tmp_path / "out" / "checkpoint_step_3" / "manifest.json").is_file()


@pytest.mark.parametrize("key,value", [("learning_rate", -1.0), ("batch_size", 0), ("save_interval", 0),
                                       ("lr_scheduler", "cosine_annealing"), ("optimizer_type", "sgd")])
def test_bad_parameters_stop_before_compute(key, value):
    with pytest.raises(ValueError, match=key):
        TrainConfig.from_flat(**{key: value}).validate()
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig.from_flat(warmup_steps=50, max_steps=10).validate()


def test_no_weight_decay_on_norms():
    from minigpt.train.optim import param_groups
    model = GPT(ModelConfig(**CFG))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2 * CFG["n_layers"] + 1
    assert math.isclose(decay["weight_decay"], 0.1)


def test_compile_fallback_when_torch_compile_raises(tmp_path, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no compiler on this platform")

    monkeypatch.setattr(torch, "compile", broken)
    t = make_trainer(tmp_path, max_steps=2, enable_compile=True)
    with caplog.at_level("WARNING"):
        assert t.fit()["step"] == 2
    assert "torch.compile unavailable" in caplog.text and "running eager" in caplog.text


def test_compile_fallback_when_compiled_module_fails_at_first_call(tmp_path, monkeypatch, caplog):
    calls = []

    def lazy_broken(model, **k):
        def compiled(*a, **kw):
            calls.append(1)
            raise RuntimeError("inductor: backend compiler failed")
        return compiled

    monkeypatch.setattr(torch, "compile", lazy_broken)
    t = make_trainer(tmp_path, max_steps=3, enable_compile=True)
    with caplog.at_level("WARNING"):
        assert t.fit()["step"] == 3
    assert len(calls) == 1 and "continuing without compile" in caplog.text  # tried once, then eager


def test_metrics_lines_hold_every_field(tmp_path):
    t = make_trainer(tmp_path, max_steps=2, eval_interval=2)
    t.fit()
    recs = [json.loads(l) for l in open(t.metrics_path)]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "memory_mb", "elapsed_s", "tokens_seen"} <= set(recs[0])
    assert 0 < recs[0]["mfu"] < 1 and recs[0]["tokens_per_s"] > 0 and "val_loss" in recs[-1]


def test_progress_bar_in_console(tmp_path, capsys):
    make_trainer(tmp_path, max_steps=3, progress_bar=True).fit()
    err = capsys.readouterr().err
    assert "pretrain" in err and "3/3" in err


def test_missing_optional_loggers_say_what_to_install(tmp_path, caplog, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_loggers(name, *a, **k):
        if name in ("wandb", "torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_loggers)
    t = make_trainer(tmp_path, max_steps=2, use_wandb=True, use_tensorboard=True)
    with caplog.at_level("WARNING"):
        assert t.fit()["step"] == 2
    assert "pip install wandb" in caplog.text and "pip install tensorboard" in caplog.text


def test_num_threads_sets_torch_and_env(monkeypatch):
    import os
    from minigpt.devices import physical_cores, set_threads
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "1"
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert set_threads(0) == physical_cores()  # default: physical cores
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("key,value", [("learning_rate", -1.0), ("batch_size", 0), ("save_steps", 0),
                                       ("lr_scheduler", "cosine_annealing"), ("optimizer_type", "sgd"),
                                       ("warmup_steps", 500), ("max_cpu", 120.0), ("max_faults", 0)])
def test_bad_parameters_via_load_params_and_build(key, value):
    from minigpt.params import ParameterError, load_params
    from minigpt.train.pretrain import train_config_from_params

    P = load_params("pretrain", config="ci", max_steps=30, **{key: value})
    with pytest.raises(ParameterError, match=key):
        train_config_from_params(P)  # what build_pretrain_trainer does first, before any tensor exists


def test_dynamic_seq_length_grows_in_doubling_stages(tmp_path):
    from minigpt.data.datasets import dynamic_seq_len

    assert [dynamic_seq_len(s, 12, 4, 16) for s in (0, 3, 4, 7, 8, 11, 20)] == [4, 4, 8, 8, 16, 16, 16]
    assert [dynamic_seq_len(s, 9, 8, 20) for s in (0, 2, 3, 5, 6, 8)] == [8, 8, 16, 16, 20, 20]
    t = make_trainer(tmp_path, max_steps=9, context_growth=True, context_growth_from=4, context_growth_to=16)
    t.fit()
    recs = [json.loads(l) for l in open(t.metrics_path) if '"seq_len"' in l]
    assert [r["seq_len"] for r in recs] == [4, 4, 4, 8, 8, 8, 16, 16, 16]


def test_dynamic_seq_length_resume_is_exact(tmp_path):
    kw = dict(context_growth=True, context_growth_from=4, context_growth_to=16)
    straight = make_trainer(tmp_path / "a", max_steps=10, **kw)
    straight.fit()
    first = make_trainer(tmp_path / "b", max_steps=10, **kw)
    first.callbacks.append(StopAt(5))
    first.fit()
    second = make_trainer(tmp_path / "b", max_steps=10, auto_resume=True, **kw)
    second.fit()
    assert losses(straight.metrics_path) == losses(second.metrics_path)


def test_save_config_and_log_gradients(tmp_path):
    t = make_trainer(tmp_path, max_steps=4, log_gradients=True, log_interval=2)
    t.fit()
    cfg = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert cfg["max_steps"] == 4 and cfg["train"]["log_gradients"] is True and cfg["model"]["d_model"] == 32
    recs = [json.loads(l) for l in open(t.metrics_path) if '"grad_norms"' in l]
    assert [r["step"] for r in recs] == [2, 4]
    norms = recs[0]["grad_norms"]
    assert set(norms) == {"embed_tokens", "layers.0", "layers.1", "norm"} and all(v > 0 for v in norms.values())
    # the per-block norms add up (in squares) to the total that clipping saw, before clipping
    total = math.sqrt(sum(v * v for v in norms.values()))
    assert total == pytest.approx(recs[0]["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("device,requested,expected", [
    ("cuda", "auto", "max-autotune"), ("mps", "auto", "reduce-overhead"), ("cpu", "auto", None),
    ("cpu", "max-autotune", "max-autotune"), ("cuda", "default", None),
])
def test_compile_mode_per_device(monkeypatch, device, requested, expected):
    from minigpt.train.machine import compile_model

    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: seen.setdefault("mode", mode) or model)
    compile_model(torch.nn.Linear(2, 2), TrainConfig.from_flat(compile_mode=requested), torch.device(device))
    assert seen["mode"] == expected


def _minigpt_calls_to_the_attention(fit) -> list[str]:
    """The qualified names of minigpt's own functions on the stack at the first Attention.forward reached from
    Trainer.fit, outermost first (torch's Module.__call__ frames are torch's, not calls in our code)."""
    import inspect

    from minigpt.model import gpt

    package = str(Path(gpt.__file__).resolve().parents[1])
    original, chains = gpt.Attention.forward, []

    def spy(self, *a, **k):
        frames = [f.frame.f_code.co_qualname for f in inspect.stack()[1:] if f.filename.startswith(package)]
        if "Trainer.fit" in frames and not chains:
            outer_first = frames[::-1]
            chains.append(outer_first[outer_first.index("Trainer.fit"):] + ["Attention.forward"])
        return original(self, *a, **k)

    gpt.Attention.forward = spy
    try:
        fit()
    finally:
        gpt.Attention.forward = original
    return chains[0]


def test_fit_reaches_the_attention_in_five_calls(tmp_path):
    """The loop reads top to bottom: fit -> _train_step -> _forward_loss -> GPT -> Block -> Attention."""
    chain = _minigpt_calls_to_the_attention(make_trainer(tmp_path, max_steps=2).fit)
    assert chain == ["Trainer.fit", "Trainer._train_step", "Trainer._forward_loss", "GPT.forward", "Block.forward",
                     "Attention.forward"]
    assert len(chain) - 1 <= 5
    # with activation checkpointing the Block runs under torch.utils.checkpoint: still no call of ours in between
    chain = _minigpt_calls_to_the_attention(make_trainer(tmp_path / "ckpt", max_steps=2, activation_checkpointing=True).fit)
    assert chain[3:] == ["GPT.forward", "Block.forward", "Attention.forward"]
