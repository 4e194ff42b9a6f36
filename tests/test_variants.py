"""Model and optimizer variants as config switches: QK-norm, ReLU² MLP, untied head, Muon, WSD, doc-aligned windows.

Each is off by default; each is checked in the model, training, generation and export.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.data.datasets import WindowSampler, document_starts
from minigpt.infer.config import GenerationConfig
from minigpt.infer.generate import TextGenerator
from minigpt.model.gpt import KVCache
from minigpt.train.optim import MuonAdamW, build_optimizer, muon_parameter_names, newton_schulz
from minigpt.train.schedules import lr_at
from conftest import tiny_gpt, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = {"qk_norm": dict(qk_norm=True), "relu2": dict(mlp="relu2"), "untied": dict(tie_word_embeddings=False)}
GREEDY = GenerationConfig(max_new_tokens=12, do_sample=False, ignore_eos=True)


def widened(model: GPT) -> GPT:
    """Wider weights than init (peaked distributions, so greedy paths are not ties); norms off 1 so they matter."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(vocab_size=301)


# ----- the model ---------------------------------------------------------------------------------------------


def test_defaults_are_todays_model():
    cfg = ModelConfig()
    assert (cfg.qk_norm, cfg.mlp, cfg.tie_word_embeddings, cfg.d_ff) == (False, "swiglu", True, 704)
    names = {n for n, _ in GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1)).named_parameters()}
    assert not [n for n in names if "q_norm" in n or "k_norm" in n] and "layers.0.mlp.gate_proj.weight" in names


def test_variant_parameters_and_counts():
    q = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True))
    shapes = {n: tuple(p.shape) for n, p in q.named_parameters()}
    assert shapes["layers.1.self_attn.q_norm.weight"] == (8,) and shapes["layers.1.self_attn.k_norm.weight"] == (8,)
    r_cfg = ModelConfig(vocab_size=64, d_model=256, n_layers=1, n_heads=4, n_kv_heads=2, mlp="relu2")
    assert r_cfg.d_ff == 1024  # 4*d, rounded to 64
    assert ModelConfig(d_model=200, mlp="relu2").d_ff == 832  # 800 rounded up to 64
    r = GPT(r_cfg)
    assert "layers.0.mlp.gate_proj.weight" not in dict(r.named_parameters())
    u_cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, tie_word_embeddings=False)
    u = GPT(u_cfg)
    assert u.lm_head.weight.data_ptr() != u.embed_tokens.weight.data_ptr()
    for model in (q, r, u):
        assert model.num_params() == model.config.num_params()
    with pytest.raises(ValueError, match="mlp: expected one of \\('swiglu', 'relu2'\\), got 'gelu'"):
        ModelConfig(mlp="gelu")


def test_config_dict_holds_every_variant_and_round_trips():
    assert ModelConfig().to_dict()["qk_norm"] is False and ModelConfig().to_dict()["mlp"] == "swiglu"
    assert ModelConfig.from_dict(ModelConfig().to_dict()) == ModelConfig()
    cfg = ModelConfig(qk_norm=True, mlp="relu2", tie_word_embeddings=False)
    assert cfg.to_dict()["qk_norm"] is True and cfg.to_dict()["mlp"] == "relu2"
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_qk_norm_normalises_each_head_before_rope():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, qk_norm=True)).eval()
    attn = model.layers[0].self_attn
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.setdefault("q", o))
    model(torch.tensor([[1, 2, 3, 4]]))
    q = seen["q"]  # (B, T, H, D): one RMS per head and position
    assert q.shape == (1, 4, 4, 8)
    assert torch.allclose(q.pow(2).mean(-1), torch.ones(1, 4, 4), atol=5e-3)  # 1 up to eps=1e-5 on small q


def test_relu2_mlp_is_relu_squared():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, mlp="relu2"))
    mlp, x = model.layers[0].mlp, torch.randn(2, 3, 32)
    expected = torch.clamp(x @ mlp.up_proj.weight.T, min=0) ** 2 @ mlp.down_proj.weight.T
    assert torch.allclose(mlp(x), expected, atol=1e-6)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_decoding_equals_full_forward(variant):
    model = widened(tiny_gpt(64, **VARIANTS[variant]))
    ids = torch.tensor([[5, 9, 2, 33, 7, 1]])
    with torch.no_grad():
        full, _ = model(ids)
        cache = KVCache.empty(model.config, 1, 8, "cpu", torch.float32)
        model(ids[:, :4], cache=cache)
        step, _ = model(ids[:, 4:5], cache=cache)
    assert (step[0, -1] - full[0, 4]).abs().max().item() < 1e-4


# ----- generation: the C decode step never decodes a variant wrongly ------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_auto_backend_generation_equals_model(tok, variant):
    model = widened(tiny_gpt(tok.vocab_size, d_model=32, n_heads=4, n_kv_heads=2, max_seq_len=48, **VARIANTS[variant]))
    auto = TextGenerator(model, tok, decode_backend="auto")
    ref = TextGenerator(model, tok, decode_backend="model")
    for prompt in ["长江、", "Hello"]:
        ids = tok.encode(prompt)
        assert auto.generate_ids(ids, GREEDY) == ref.generate_ids(ids, GREEDY)
    assert auto.last_stats["backend"] == "native"  # the C step runs every variant (test_native_decode.py)


# ----- optimizer: Muon ---------------------------------------------------------------------------------------


def numpy_newton_schulz(g: np.ndarray, steps: int = 5) -> np.ndarray:
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / np.sqrt((x ** 2).sum())
    for _ in range(steps):
        A = x @ x.T
        x = a * x + (b * A + c * A @ A) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def test_newton_schulz_matches_hand_iteration():
    g = np.array([[3.0, 1.0], [1.0, 2.0], [0.5, -1.0]])
    ours = newton_schulz(torch.tensor(g, dtype=torch.float32)).double().numpy()
    assert np.allclose(ours, numpy_newton_schulz(g), atol=1e-5)
    # one step by hand on a diagonal 2x2: singular values s -> a s + b s^3 + c s^5 after x0 = g / ||g||_F
    d = np.array([0.6, 0.8])
    one = newton_schulz(torch.diag(torch.tensor([3.0, 4.0])), steps=1).numpy()
    assert np.allclose(np.diag(one), 3.4445 * d - 4.7750 * d ** 3 + 2.0315 * d ** 5, atol=1e-6)
    # 5 steps bring singular values near 1 (the quintic's band is roughly 0.7..1.2)
    s = np.linalg.svd(ours, compute_uv=False)
    assert ((s > 0.6) & (s < 1.3)).all()


def test_newton_schulz_of_a_stack_is_each_matrix_on_its_own():
    gen = torch.Generator().manual_seed(3)
    for shape in [(3, 8, 20), (4, 20, 8)]:  # wide and tall
        stack = torch.randn(*shape, generator=gen)
        together = newton_schulz(stack, dtype=torch.float32)
        for i in range(shape[0]):
            alone = newton_schulz(stack[i], dtype=torch.float32)
            assert torch.allclose(together[i], alone, atol=1e-5)
            assert np.allclose(alone.double().numpy(), numpy_newton_schulz(stack[i].double().numpy()), atol=1e-4)


def test_muon_groups_and_step():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, tie_word_embeddings=False))
    names = muon_parameter_names(model)
    assert names == ["layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
                     "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
                     "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight"]
    cfg = TrainConfig.from_flat(optimizer_type="muon", learning_rate=0.01, weight_decay=0.1)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    opt.ns_dtype = torch.float32  # the formula at full precision (a CPU with native bf16 iterates in bf16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[2, 3, 4, 5, 6]]))[1].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    after = dict(model.named_parameters())
    # Muon, first step: buffer = 0.05 g, Nesterov update = g.lerp(buf, 0.95) = 0.0975 g, orthogonalised
    w = "layers.0.mlp.down_proj.weight"
    update = torch.tensor(numpy_newton_schulz((0.0975 * grads[w]).double().numpy()), dtype=torch.float32)
    expected = before[w] * (1 - 0.01 * 0.1) - 0.01 * 0.2 * max(before[w].shape) ** 0.5 * update
    assert torch.allclose(after[w], expected, atol=1e-6)
    # the rest is AdamW: same result as torch's
    ref_params = {n: torch.nn.Parameter(before[n].clone()) for n in ("embed_tokens.weight", "norm.weight")}
    ref = torch.optim.AdamW([{"params": [ref_params["embed_tokens.weight"]], "weight_decay": 0.1},
                             {"params": [ref_params["norm.weight"]], "weight_decay": 0.0}], lr=0.01, betas=(0.9, 0.95))
    for n, p in ref_params.items():
        p.grad = grads[n]
    ref.step()
    for n, p in ref_params.items():
        assert torch.allclose(after[n], p, atol=1e-6), n


def test_newton_schulz_precision_follows_the_device(monkeypatch):
    import minigpt.devices as devices
    from minigpt.train.optim import muon_ns_dtype

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert muon_ns_dtype(torch.device("cpu")) == torch.float32  # emulated bf16 would be slow
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert muon_ns_dtype(torch.device("cpu")) == torch.bfloat16
    assert muon_ns_dtype(torch.device("cuda")) == torch.bfloat16
    # in bf16 the result stays the fp32 one within bf16's precision (8 bits of mantissa, 5 steps)
    g = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    full, half = newton_schulz(g, dtype=torch.float32), newton_schulz(g, dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    rel = (full - half).norm() / full.norm()
    assert 0 < rel < 0.05, rel


def test_muon_with_tied_embeddings_keeps_the_embedding_on_adamw():
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1))
    assert not [n for n in muon_parameter_names(model) if "embed" in n or "lm_head" in n or "norm" in n]
    opt = build_optimizer(model, TrainConfig.from_flat(optimizer_type="muon"), torch.device("cpu"))
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == model.num_params()  # every parameter once, the tied matrix included


# ----- schedule: warmup-stable-decay ---------------------------------------------------------------------------


@pytest.mark.parametrize("step,expected", [(0, 0.1), (9, 1.0), (10, 1.0), (87, 1.0), (88, 1.0), (99, 0.55),
                                           (104, 0.1 + 0.9 * 6 / 22), (110, 0.1), (200, 0.1)])
def test_wsd_values(step, expected):
    # max_steps 110, decay_fraction 0.2: decay over the last 22 steps, from step 88 to min_lr at step 110
    lr = lr_at(step, learning_rate=1.0, min_lr=0.1, warmup_steps=10, max_steps=110, lr_scheduler="wsd",
               decay_fraction=0.2)
    assert lr == pytest.approx(expected, abs=1e-9)


def test_wsd_decay_fraction_is_validated_and_used():
    assert TrainConfig().schedule.decay_fraction == 0.2
    with pytest.raises(ValueError, match="decay_fraction: expected a share of the steps in \\(0, 1\\], got 1.5"):
        TrainConfig.from_flat(decay_fraction=1.5).validate()
    assert lr_at(50, learning_rate=1.0, min_lr=0.0, warmup_steps=0, max_steps=100, lr_scheduler="wsd",
                 decay_fraction=0.5) == pytest.approx(1.0)
    assert lr_at(75, learning_rate=1.0, min_lr=0.0, warmup_steps=0, max_steps=100, lr_scheduler="wsd",
                 decay_fraction=0.5) == pytest.approx(0.5)


# ----- data: document-aligned windows ---------------------------------------------------------------------------


def doc_tokens() -> np.ndarray:
    rng = np.random.default_rng(0)
    docs = [rng.integers(5, 60, size=n).astype(np.uint16) for n in (7, 30, 12, 25, 3, 40, 18)]
    return np.concatenate([np.append(d, 0) for d in docs]).astype(np.uint16)  # each document ends with <|endoftext|>


def test_document_starts():
    assert document_starts(np.array([4, 5, 0, 6, 0, 0, 7, 8], dtype=np.uint16)).tolist() == [0, 3, 5, 6]
    assert document_starts(np.array([0, 4, 0, 6], dtype=np.uint16)).tolist() == [1, 3]


def test_doc_aligned_windows_start_at_documents_and_are_deterministic():
    data = doc_tokens()
    starts = set(document_starts(data).tolist())
    s = WindowSampler(data, batch_size=4, seq_len=8, seed=3, doc_aligned=True)
    seen = set()
    for i in range(20):
        x, y = s.batch_at(i)
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            hits = [st for st in starts if data[st:st + 8].tolist() == row_x]
            assert hits, row_x
            seen.update(hits)
            assert row_y == row_x[1:] + [row_y[-1]]
    assert len(seen) >= 4  # several documents drawn, not one
    again = WindowSampler(data, batch_size=4, seq_len=8, seed=3, doc_aligned=True)
    again.load_state_dict({"seed": 3, "position": 7})
    assert torch.equal(next(again)[0], s.batch_at(7)[0])  # resume: a function of (seed, index)
    # rank 1 of 2 takes the second half of the global batch
    r1 = WindowSampler(data, batch_size=2, seq_len=8, seed=3, rank=1, world_size=2, doc_aligned=True)
    assert torch.equal(r1.batch_at(5)[0], s.batch_at(5)[0][2:])


def test_doc_aligned_without_room_says_so():
    data = np.array([0, 5, 6, 7, 8, 9, 10, 11], dtype=np.uint16)  # one document, starting at 1: no room for 7 tokens
    with pytest.raises(ValueError, match="doc_aligned_batches: no document start .* seq_len\\+1=7"):
        WindowSampler(data, batch_size=1, seq_len=6, doc_aligned=True)


# ----- training with each switch ------------------------------------------------------------------------------


def train(tmp_path, model_kw=None, max_steps=12, **train_kw):
    from test_trainer import tokens

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=32,
                            **(model_kw or {})))
    cfg = TrainConfig.from_flat(**{**dict(learning_rate=3e-3, min_lr=3e-4, max_steps=max_steps, batch_size=4, warmup_steps=2,
                                eval_interval=6, num_eval_batches=1, save_interval=6, log_interval=1, plot_loss=False,
                                seq_len=16, seed=0, progress_bar=False), **train_kw})
    from minigpt.data.datasets import sequential_windows
    from minigpt.train.trainer import Trainer

    data = tokens()
    sampler = WindowSampler(data, 4, 16, seed=0, doc_aligned=cfg.schedule.doc_aligned_batches)
    return Trainer(model, cfg, sampler, sequential_windows(tokens(seed=1), 4, 16, 1), tmp_path / "out")


def losses(path):
    return [json.loads(l)["loss"] for l in open(path) if '"loss"' in l and '"skipped"' not in l]


@pytest.mark.parametrize("model_kw,train_kw", [
    (dict(qk_norm=True), {}), (dict(mlp="relu2"), {}), (dict(tie_word_embeddings=False), {}),
    ({}, dict(optimizer_type="muon", learning_rate=1e-2)), ({}, dict(lr_scheduler="wsd")),
    ({}, dict(doc_aligned_batches=True)),
], ids=["qk_norm", "relu2", "untied", "muon", "wsd", "doc_aligned"])
def test_training_with_each_switch_lowers_loss(tmp_path, model_kw, train_kw):
    t = train(tmp_path, model_kw, max_steps=30, **train_kw)
    t.fit()
    curve = losses(t.metrics_path)
    assert len(curve) == 30 and np.mean(curve[-5:]) < np.mean(curve[:5]) - 0.3


def test_muon_resume_is_bitwise(tmp_path):
    from test_trainer import StopAt

    straight = train(tmp_path / "a", optimizer_type="muon", lr_scheduler="wsd")
    straight.fit()
    first = train(tmp_path / "b", optimizer_type="muon", lr_scheduler="wsd")
    first.callbacks.append(StopAt(6))
    assert first.fit()["step"] == 6
    second = train(tmp_path / "b", optimizer_type="muon", lr_scheduler="wsd", auto_resume=True)
    second.fit()
    assert second.step == 12 and losses(straight.metrics_path) == losses(second.metrics_path)
    for (k, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), k
