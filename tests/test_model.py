import pytest
import torch

from minigpt import GPT, ModelConfig
from minigpt.model.gpt import KVCache


def tiny_cfg(**kw):
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


def test_shapes_and_loss():
    torch.manual_seed(0)
    model = GPT(tiny_cfg())
    x = torch.randint(0, 97, (3, 10))
    y = torch.randint(0, 97, (3, 10))
    logits, loss = model(x, y)
    assert logits.shape == (3, 10, 97)
    # An untrained model with std-0.02 init predicts roughly uniformly: loss near ln(97).
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.1


def test_causality():
    torch.manual_seed(0)
    model = GPT(tiny_cfg()).eval()
    x = torch.randint(0, 97, (1, 12))
    y = x.clone()
    y[0, 8] = (y[0, 8] + 1) % 97
    a, _ = model(x)
    b, _ = model(y)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-4)


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = GPT(cfg).eval()
    x = torch.randint(0, 97, (2, 16))
    full, _ = model(x)
    cache = KVCache.empty(cfg, 2, 32, x.device, torch.float32)
    with torch.no_grad():
        pre, _ = model(x[:, :9], cache=cache)
        steps = [pre]
        for t in range(9, 16):
            out, _ = model(x[:, t:t + 1], cache=cache)
            steps.append(out)
    inc = torch.cat(steps, dim=1)
    assert cache.length == 16
    assert torch.allclose(full, inc, atol=1e-5)


def test_tied_embeddings_and_counts():
    cfg = tiny_cfg()
    model = GPT(cfg)
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    assert model.num_params() == cfg.num_params()


@pytest.mark.parametrize("name,low,high", [("tiny", 1e6, 5e6), ("small", 24e6, 28e6), ("medium", 95e6, 110e6)])
def test_preset_param_counts(name, low, high):
    cfg = ModelConfig.from_preset(name)
    assert low <= cfg.num_params() <= high
    if name != "medium":  # building medium costs ~0.4 GB; its count is checked from shapes
        assert GPT(cfg).num_params() == cfg.num_params()


def test_small_is_minimind2_small_shape():
    cfg = ModelConfig.from_preset("small")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size) == (512, 8, 8, 2, 6400)
    assert cfg.num_params() == 25_829_888


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="n_kv_heads"):
        tiny_cfg(n_kv_heads=3)
    with pytest.raises(ValueError, match="preset"):
        ModelConfig.from_preset("huge")


def test_state_dict_keeps_llama_names_and_shapes():
    cfg = tiny_cfg()
    sd = GPT(cfg).state_dict()
    d, kv, ff = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.d_ff
    expected = {"embed_tokens.weight": (97, d), "norm.weight": (d,), "lm_head.weight": (97, d)}
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        expected.update({
            p + "self_attn.q_proj.weight": (d, d), p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, d),
            p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d), p + "mlp.down_proj.weight": (d, ff),
            p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
        })
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


@pytest.mark.parametrize("with_positions", [False, True])
def test_float32_logits_and_gradients_match_float64(with_positions):
    """The float32 forward and backward agree with the same model in float64 (non-trivial norm weights)."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    fast = GPT(cfg)
    with torch.no_grad():  # non-trivial norm weights, so the norms' weights are exercised
        for name, p in fast.named_parameters():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.uniform_(0.5, 1.5)
    ref = GPT(cfg).double()
    ref.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    x = torch.randint(0, 97, (2, 24))
    y = torch.randint(0, 97, (2, 24))
    kw = {"positions": torch.arange(3, 27).repeat(2, 1)} if with_positions else {}
    logits, loss = fast(x, y, **kw)
    rlogits, rloss = ref(x, y, **kw)
    loss.backward()
    rloss.backward()
    assert torch.allclose(logits.double(), rlogits, atol=1e-5)
    ref_grads = dict(ref.named_parameters())
    for name, p in fast.named_parameters():
        g, rg = p.grad.double(), ref_grads[name].grad
        assert torch.allclose(g, rg, atol=1e-6 + 1e-4 * rg.abs().max().item()), name


def test_hooked_or_wrapped_projections_still_run():
    """A forward hook on a projection (as LoRA or a probe would add) runs and leaves the output unchanged."""
    torch.manual_seed(0)
    model = GPT(tiny_cfg()).eval()
    x = torch.randint(0, 97, (1, 8))
    base, _ = model(x)
    seen = []
    model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model.layers[1].mlp.up_proj.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    hooked, _ = model(x)
    assert len(seen) == 2
    assert torch.allclose(base, hooked, atol=1e-5)


def test_compiled_training_step_has_no_graph_breaks():
    torch._dynamo.reset()
    model = GPT(tiny_cfg()).train()
    x = torch.randint(0, 97, (2, 16))
    explained = torch._dynamo.explain(model)(x, x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
