"""Memory of a training step: the chunked LM-head loss and activation checkpointing against the reference path,
the estimate against the tensors autograd really saves, and the refusal that names what would fit."""
import json

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.data.datasets import WindowSampler
from minigpt.model import chunked_loss
from minigpt.model.chunked_loss import chunked_cross_entropy
from minigpt.params import load_params
from minigpt.train import memory
from minigpt.train.memory import InsufficientMemory, estimate_train_memory, plan_memory, what_fits
from minigpt.train.trainer import Trainer

CFG = dict(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    m = GPT(ModelConfig(**{**CFG, **kw}))
    m.train()
    return m


def _batch(B=3, T=16, V=96, ignore_every=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    if ignore_every:
        y[:, ::ignore_every] = -100  # SFT's prompt/padding positions carry no loss
    return x, y


def _loss_and_grads(model, x, y, autocast=False):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, loss = model(x, y)
    loss.backward()
    return logits, loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def test_chunked_function_equals_cross_entropy_with_ragged_chunks():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 11, 8, generator=g, requires_grad=True)
    w = torch.randn(50, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (2, 11), generator=g)
    t[0, :4] = -100
    ref = F.cross_entropy((h @ w.t()).float().view(-1, 50), t.view(-1), ignore_index=-100)
    gh, gw = torch.autograd.grad(ref * 3.0, (h, w))  # a non-unit upstream gradient reaches both inputs
    got = chunked_cross_entropy(h, w, t, rows=5)  # 22 rows: chunks of 5, 5, 5, 5, 2
    ch, cw = torch.autograd.grad(got * 3.0, (h, w))
    assert abs(got.item() - ref.item()) < 1e-6
    torch.testing.assert_close(ch, gh, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cw, gw, rtol=1e-5, atol=1e-6)


def test_chunked_function_fp16_gradients_survive_a_loss_scale():
    """Under fp16 (+ GradScaler) each logit's gradient (softmax - onehot) / n is ~1e-8 here, below fp16's smallest
    value: the stored gradients are fp32, so the scaled gradient equals the fp32 reference's."""
    g = torch.Generator().manual_seed(0)
    n, vocab, d = 2048, 4096, 16
    h32 = torch.randn(n, d, generator=g) * 0.1
    w32 = torch.randn(vocab, d, generator=g) * 0.1
    t = torch.randint(0, vocab, (n,), generator=g)
    h, w = h32.half().requires_grad_(), w32.half().requires_grad_()
    loss = chunked_cross_entropy(h, w, t, rows=512)
    (loss * 65536.0).backward()  # what GradScaler does before unscaling
    h_ref, w_ref = h32.clone().requires_grad_(), w32.clone().requires_grad_()
    F.cross_entropy(h_ref @ w_ref.t(), t).backward()
    assert h.grad.dtype == torch.float16 and w.grad.dtype == torch.float16
    for got, ref in ((h.grad, h_ref.grad), (w.grad, w_ref.grad)):
        got = got.float() / 65536.0
        assert (got == 0).float().mean() < 0.01  # not flushed to zero
        assert (got - ref).norm() / ref.norm() < 2e-2


def test_chunked_function_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"hidden \(2, 5, 8\) and targets \(2, 4\)"):
        chunked_cross_entropy(torch.zeros(2, 5, 8), torch.zeros(10, 8), torch.zeros(2, 4, dtype=torch.long))


@pytest.mark.parametrize("ignore_every", [0, 3])
def test_model_chunked_loss_matches_reference_fp32(monkeypatch, ignore_every):
    monkeypatch.setattr(chunked_loss, "chunk_rows", lambda vocab: 7)  # 48 rows in 7 chunks, the last one short
    x, y = _batch(ignore_every=ignore_every)
    ref_model, model = _model(), _model()
    ref_logits, ref_loss, ref_grads = _loss_and_grads(ref_model, x, y)
    model.chunked_loss = True
    logits, loss, grads = _loss_and_grads(model, x, y)
    assert logits is None  # the whole point: no B x T x vocab tensor in training
    assert abs(loss.item() - ref_loss.item()) < 1e-5
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)
    # evaluation and generation keep the reference path: logits come back, equal to the plain model's
    model.eval()
    with torch.no_grad():
        eval_logits, eval_loss = model(x, y)
        gen_logits, _ = model(x)
        ref_model.eval()
        ref_eval_logits, ref_eval_loss = ref_model(x, y)
    torch.testing.assert_close(eval_logits, ref_eval_logits, rtol=0, atol=0)
    torch.testing.assert_close(gen_logits, ref_eval_logits, rtol=0, atol=0)
    assert eval_loss.item() == ref_eval_loss.item()


def test_model_chunked_loss_close_to_reference_under_bf16_autocast(monkeypatch):
    monkeypatch.setattr(chunked_loss, "chunk_rows", lambda vocab: 10)
    x, y = _batch()
    _, ref_loss, ref_grads = _loss_and_grads(_model(), x, y, autocast=True)
    model = _model()
    model.chunked_loss = True
    _, loss, grads = _loss_and_grads(model, x, y, autocast=True)
    assert abs(loss.item() - ref_loss.item()) < 2e-3  # bf16 logits, fp32 softmax, as the reference
    for name, g in grads.items():
        assert g.dtype == torch.float32, name  # parameter gradients stay fp32
        cos = F.cosine_similarity(g.flatten(), ref_grads[name].flatten(), dim=0).item()
        assert cos > 0.995, (name, cos)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(dropout):
    x, y = _batch()
    ref_model, model = _model(dropout=dropout), _model(dropout=dropout)
    model.activation_checkpointing = True
    torch.manual_seed(5)
    _, ref_loss, ref_grads = _loss_and_grads(ref_model, x, y)
    torch.manual_seed(5)  # the same dropout masks; checkpoint replays the RNG state in its recompute
    _, loss, grads = _loss_and_grads(model, x, y)
    assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def _saved_bytes(model, x, y, autocast):
    """Bytes of the distinct storages autograd keeps for the backward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(x, y)
    return sum(seen.values())


@pytest.mark.parametrize("dims", [dict(d_model=64, n_heads=4, n_kv_heads=2), dict(d_model=96, n_heads=6, n_kv_heads=2)])
@pytest.mark.parametrize("autocast", [False, True])
def test_activation_estimate_matches_what_autograd_saves(dims, autocast):
    """The per-layer term of the estimate against the saved tensors of a 1- and a 3-layer model (the difference
    is two layers' worth, whatever the embeddings and the head keep)."""
    B, T = 2, 32
    x, y = _batch(B, T)
    measured = []
    for layers in (1, 3):
        measured.append(_saved_bytes(_model(n_layers=layers, **dims), x, y, autocast))
    per_layer_measured = (measured[1] - measured[0]) / 2
    cfg = ModelConfig(**{**CFG, **dims})
    dtype = torch.bfloat16 if autocast else torch.float32
    one = estimate_train_memory(ModelConfig(**{**CFG, **dims, "n_layers": 1}), B, T, dtype)["activations"]
    three = estimate_train_memory(ModelConfig(**{**CFG, **dims, "n_layers": 3}), B, T, dtype)["activations"]
    per_layer_estimated = (three - one) / 2
    assert cfg.d_model == dims["d_model"]
    assert 0.8 < per_layer_estimated / per_layer_measured < 1.3, (per_layer_estimated, per_layer_measured)


def test_estimate_orders_the_switches_and_optimizers():
    med = ModelConfig.from_preset("medium")
    plain = estimate_train_memory(med, 8, 1024, torch.float32, "adamw", False, False)
    chunked = estimate_train_memory(med, 8, 1024, torch.float32, "adamw", False, True)
    ckpt = estimate_train_memory(med, 8, 1024, torch.float32, "adamw", True, True)
    muon = estimate_train_memory(med, 8, 1024, torch.float32, "muon", True, True)
    assert plain["total"] > chunked["total"] > ckpt["total"]
    assert plain["lm_head"] == 3 * 4 * 8 * 1024 * 6400  # fp32 logits, log-softmax and their gradient
    assert ckpt["activations"] < chunked["activations"] / 3  # 16 layers' activations against about 3 blocks' worth
    n = med.num_params()
    assert plain["weights"] == plain["grads"] == 4 * n and plain["optimizer"] == 8 * n
    assert 4 * n < muon["optimizer"] < 8 * n  # one buffer for the hidden matrices, two moments for the rest
    assert sum(v for k, v in plain.items() if k != "total") == plain["total"]


def test_plan_memory_refuses_naming_what_fits(monkeypatch):
    med = GPT.__new__(GPT)  # the refusal needs only a config; building medium's weights is not the point here
    torch.nn.Module.__init__(med)
    med.config = ModelConfig.from_preset("medium")
    machine = TrainConfig().machine
    machine.chunked_loss = False
    budget = 6 * 1024 ** 3
    monkeypatch.setattr(memory, "available_bytes", lambda device: budget - 4 * med.config.num_params())
    with pytest.raises(InsufficientMemory) as e:
        plan_memory(med, machine, 8, 1024, 1, "adamw", torch.device("cpu"), torch.float32)
    msg = str(e.value)
    assert "batch_size 8 x seq_len 1024" in msg and "6.0 GB is available on cpu" in msg
    assert "activation_checkpointing true" in msg and "accumulation_steps" in msg and "check_memory false" in msg
    # every suggestion really fits the budget by the same estimate
    fits = what_fits(med.config, 8, 1024, 1, torch.float32, "adamw", False, False, budget)
    smaller = [f.split() for f in fits if f.startswith("batch_size")]
    # chunked_loss alone (about 10.6 GB) does not fit 6 GB, so it is not offered
    assert len(smaller) == 1 and fits[0].startswith("activation_checkpointing true") and len(fits) == 2
    b, steps = int(smaller[0][1]), int(smaller[0][4])
    assert b < 8 and b * steps >= 8  # at least the same sequences per optimizer step
    assert estimate_train_memory(med.config, b, 1024, torch.float32, "adamw", False, False)["total"] <= budget
    assert estimate_train_memory(med.config, 8, 1024, torch.float32, "adamw", True, True)["total"] <= budget
    # the switches went onto the model before the check; with the check off the run goes ahead
    machine.check_memory = False
    est = plan_memory(med, machine, 8, 1024, 1, "adamw", torch.device("cpu"), torch.float32)
    assert est["total"] > budget and med.chunked_loss is False and med.activation_checkpointing is False


def _trainer(tmp_path, name, **kw):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32))
    cfg = TrainConfig.from_flat(**{**dict(learning_rate=3e-3, min_lr=3e-4, max_steps=4, batch_size=4, warmup_steps=1,
                                          eval_interval=100, num_eval_batches=1, save_interval=100, log_interval=1,
                                          plot_loss=False, seq_len=16, progress_bar=False, dtype="float32"), **kw})
    data = torch.randint(0, 64, (3000,), generator=torch.Generator().manual_seed(3)).numpy().astype("uint16")
    return Trainer(model, cfg, WindowSampler(data, 4, 16, seed=0), None, tmp_path / name)


def test_trainer_losses_equal_with_and_without_the_memory_switches(tmp_path):
    runs = {}
    for name, kw in {"plain": dict(chunked_loss=False), "both": dict(chunked_loss=True, activation_checkpointing=True)}.items():
        t = _trainer(tmp_path, name, **kw)
        assert t.model.chunked_loss is kw["chunked_loss"] and t.memory_estimate["total"] > 0
        t.fit()
        runs[name] = [json.loads(l)["loss"] for l in open(t.metrics_path) if '"loss"' in l]
    assert len(runs["plain"]) == 4
    for a, b in zip(runs["plain"], runs["both"]):
        assert abs(a - b) < 1e-5


def test_trainer_refuses_before_any_step(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1024 ** 2)  # 1 MB free
    with pytest.raises(InsufficientMemory, match="batch_size 4 x seq_len 16: a training step needs about"):
        _trainer(tmp_path, "refused")
    assert not (tmp_path / "refused" / "metrics.jsonl").exists()


def test_switches_are_notebook_parameters():
    P = load_params("pretrain", {"activation_checkpointing": True, "chunked_loss": False, "check_memory": False})
    m = P.build(TrainConfig).machine
    assert m.activation_checkpointing is True and m.chunked_loss is False and m.check_memory is False
