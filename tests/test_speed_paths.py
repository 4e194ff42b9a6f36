"""The CPU training speed paths, each against the reference: attention as two matmuls (model/matmul_attention.py)
against `scaled_dot_product_attention`, the chunked LM-head loss against `F.cross_entropy` of the full logits (both
in one 50-step bf16 curve), and glibc malloc keeping freed blocks (devices.keep_freed_memory)."""
import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, ModelConfig, TrainConfig
from minigpt.model.gpt import Attention
from minigpt.model.matmul_attention import attention_extra_bytes, matmul_attention, use_matmul_attention
from minigpt.train.memory import estimate_train_memory, plan_memory

CPU = torch.device("cpu")


def _qkv(B=2, H=4, KV=2, T=12, S=None, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = S or T
    q = torch.randn(B, H, T, D, generator=g, requires_grad=True)
    k = torch.randn(B, KV, S, D, generator=g, requires_grad=True)
    v = torch.randn(B, KV, S, D, generator=g, requires_grad=True)
    return q, k, v


def _packed_mask(B, T, lengths):
    """Causal attention within each packed document of the given lengths (SFT's packed rows)."""
    doc = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    same = doc[:, None] == doc[None, :]
    return (same & torch.ones(T, T, dtype=torch.bool).tril()).expand(B, 1, T, T)


@pytest.mark.parametrize("case", ["causal", "packed", "decode", "mha"])
def test_matmul_attention_equals_sdpa_in_fp32(case):
    mask, causal, kw = None, False, {}
    if case == "causal":
        causal = True
    elif case == "packed":
        mask = _packed_mask(2, 12, [5, 4, 3])
    elif case == "decode":  # one new query against 12 cached keys
        kw = dict(T=1, S=12)
    else:
        kw = dict(KV=4)
        causal = True
    q, k, v = _qkv(**kw)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
    ref_grads = torch.autograd.grad((ref * torch.arange(ref.numel()).view_as(ref).sin()).sum(), (q, k, v))
    out = matmul_attention(q, k, v, mask, causal)
    grads = torch.autograd.grad((out * torch.arange(out.numel()).view_as(out).sin()).sum(), (q, k, v))
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-5
    for a, b in zip(grads, ref_grads):
        assert (a - b).abs().max().item() < 1e-5


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    return GPT(ModelConfig(**{**cfg, **kw}))


def _set_matmul(model, on):
    for m in model.modules():
        if isinstance(m, Attention):
            m.use_matmul = on


def test_model_logits_and_gradients_match_in_fp32():
    x = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 96, (3, 16), generator=torch.Generator().manual_seed(2))
    runs = []
    for on in (False, True):
        model = _model()
        model.train()
        _set_matmul(model, on)
        logits, loss = model(x, y)
        loss.backward()
        runs.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (l0, g0), (l1, g1) = runs
    assert (l0 - l1).abs().max().item() < 1e-5
    assert max((g0[n] - g1[n]).abs().max().item() for n in g0) < 1e-5


def _bf16_curve(speed: bool, steps: int = 50) -> list[float]:
    """Training losses of a small model under bf16 autocast: the reference path, or matmul attention + the
    chunked loss (the trainer's CPU bf16 defaults)."""
    model = _model(d_model=64, n_heads=4, n_kv_heads=2, max_seq_len=64)
    model.train()
    _set_matmul(model, speed)
    model.chunked_loss = speed
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    data = torch.randint(0, 96, (64, 33), generator=g) % 24  # a small alphabet, so the loss falls
    losses = []
    for step in range(steps):
        batch = data[(step * 4) % 64:(step * 4) % 64 + 4]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_bf16_loss_curves_match_over_50_steps():
    ref, fast = _bf16_curve(False), _bf16_curve(True)
    assert ref[-1] < ref[0] - 0.5  # it learns, so the curves are compared over a real descent
    assert max(abs(a - b) for a, b in zip(ref, fast)) < 1e-3


def test_auto_picks_matmul_only_on_cpu_bf16_up_to_512():
    assert use_matmul_attention("auto", CPU, torch.bfloat16, 256)
    assert use_matmul_attention("auto", CPU, torch.bfloat16, 512)
    assert not use_matmul_attention("auto", CPU, torch.bfloat16, 1024)
    assert not use_matmul_attention("auto", CPU, None, 256)  # fp32: SDPA's kernel is the faster one
    assert not use_matmul_attention("auto", torch.device("cuda"), torch.bfloat16, 256)
    assert use_matmul_attention("matmul", CPU, None, 4096) and not use_matmul_attention("sdpa", CPU, torch.bfloat16, 64)
    with pytest.raises(ValueError, match="attention: expected one of auto, sdpa, matmul, got 'flash'"):
        use_matmul_attention("flash", CPU, None, 64)
    with pytest.raises(ValueError, match="attention.*one of .*got 'flash'"):
        TrainConfig.from_flat(attention="flash")


def test_plan_memory_sets_the_switch_and_counts_the_kept_probabilities():
    model = _model()
    cfg = model.config
    for impl, dtype, expected in (("auto", torch.bfloat16, True), ("auto", torch.float32, False),
                                  ("sdpa", torch.bfloat16, False), ("matmul", torch.float32, True)):
        machine = TrainConfig.from_flat(attention=impl).machine
        est = plan_memory(model, machine, 4, 32, 1, "adamw", CPU, dtype)
        assert all(m.use_matmul == expected for m in model.modules() if isinstance(m, Attention))
        base = estimate_train_memory(cfg, 4, 32, dtype, "adamw", False, True, False)
        extra = attention_extra_bytes(4, cfg.n_heads, 32, cfg.n_layers, dtype == torch.bfloat16) if expected else 0
        assert est["activations"] == base["activations"] + extra
    assert attention_extra_bytes(8, 4, 256, 4, True) == 8 * 4 * 256 * 256 * 4 * 2


_RSS_AFTER_FREE = """
import sys, psutil, torch
from minigpt.devices import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
proc = psutil.Process()
before = proc.memory_info().rss
x = torch.ones(64 * 2 ** 20)  # 256 MB, touched
del x
print((proc.memory_info().rss - before) // 2 ** 20)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_keeps_a_freed_block_for_reuse():
    """By default glibc maps a 256 MB block on its own and returns it when freed; after keep_freed_memory() it stays
    in the heap for the next step's buffers (each run in its own process: the setting is process-wide)."""
    import subprocess
    import sys

    kept = {mode: int(subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, mode], capture_output=True, text=True,
                                     check=True).stdout) for mode in ("default", "keep")}
    assert kept["default"] < 64 and kept["keep"] > 200, kept
