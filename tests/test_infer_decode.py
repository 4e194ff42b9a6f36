"""decode.py and backends.py: row bookkeeping, left padding, the loop, the choice of decode step."""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_gpt
from minigpt.infer.backends import DecodeSteps, check_backend
from minigpt.infer.config import GenerationConfig
from minigpt.infer.decode import Batch, decode, model_step, prefill
from minigpt.infer.native_decode import NativeDecoder, load_library, quantized_copy
from minigpt.infer.sampling import Sampler
from minigpt.model.gpt import KVCache

pytestmark = pytest.mark.usefixtures("one_thread")
PAD = 3
needs_cc = pytest.mark.skipif(load_library() is None, reason="no C compiler: the native step cannot be built")


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(120, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


def alone(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0][0, -1]


def test_batch_bookkeeping():
    b = Batch.left_padded([3, 5, 1])
    assert (b.rows, b.positions, b.pads) == ([0, 1, 2], [3, 5, 1], [2, 0, 4])
    cache = KVCache.empty(tiny_gpt(50).config, 3, 8, "cpu", torch.float32)
    cache.keys[0][:, 0, 0, 0] = torch.tensor([10.0, 11.0, 12.0])  # tag each cache row
    b.advance()
    b.keep([0, 2], cache)
    assert (b.rows, b.positions, b.pads) == ([0, 2], [4, 2], [2, 4])
    assert cache.keys[0][:, 0, 0, 0].tolist() == [10.0, 12.0] and len(cache.values[0]) == 2


def test_left_padded_prefill_and_steps_equal_each_prompt_alone(model):
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    with torch.no_grad():
        logits, cache, batch = prefill(model, prompts, PAD, budget=4)
        assert cache.length == 5 and cache.capacity == 9 and batch.pads == [0, 3, 2]
        for r, p in enumerate(prompts):
            assert torch.allclose(logits[r], alone(model, p), atol=1e-5)
        nxt = [20, 21, 22]
        logits = model_step(model, nxt, cache, batch)
        for r, p in enumerate(prompts):
            assert torch.allclose(logits[r], alone(model, p + [nxt[r]]), atol=1e-5)
        batch.advance()
        batch.keep([1, 2], cache)  # row 0 leaves; the others go on unchanged
        logits = model_step(model, [30, 31], cache, batch)
        for i, r in enumerate([1, 2]):
            assert torch.allclose(logits[i], alone(model, prompts[r] + [nxt[r], 30 + i]), atol=1e-5)


class StopAt:
    """A row that finishes when it receives `stop`."""

    def __init__(self, stop):
        self.stop, self.ids = stop, []

    def push(self, tok):
        self.ids.append(tok)
        return tok == self.stop


def test_decode_loop_drops_finished_rows(model):
    cfg = GenerationConfig(do_sample=False, max_new_tokens=6)
    prompts = [[5, 6, 7], [8, 9]]
    free = [StopAt(-1), StopAt(-1)]
    counts = list(decode(model, None, prompts, PAD, 6, Sampler(cfg, prompts, 120), free))
    assert counts == [2] * 6 and all(len(r.ids) == 6 for r in free)
    stop = free[0].ids[1]
    k = free[0].ids.index(stop)  # row 0 stops at step k (0 or 1), the first time it meets `stop`
    rows = [StopAt(stop), StopAt(-1)]
    counts = list(decode(model, None, prompts, PAD, 6, Sampler(cfg, prompts, 120), rows))
    assert counts == [2] * (k + 1) + [1] * (5 - k)
    assert rows[0].ids == free[0].ids[:k + 1] and rows[1].ids == free[1].ids


def test_backend_names():
    assert check_backend("model") == "model" and check_backend("auto") == "auto"
    for bad in ("cuda", "torch"):
        with pytest.raises(ValueError, match=f"decode_backend='{bad}': expected one of auto, native, model"):
            check_backend(bad)


@needs_cc
def test_forward_hooks_keep_generation_on_the_model(model):
    hooked = copy.deepcopy(model)
    handle = hooked.layers[0].mlp.register_forward_hook(lambda m, i, o: o * 0.0)
    assert DecodeSteps(hooked).native_step() is None
    with pytest.raises(RuntimeError, match="forward hooks"):
        DecodeSteps(hooked, backend="native").native_step()
    handle.remove()
    assert isinstance(DecodeSteps(hooked).native_step(), NativeDecoder)
    assert DecodeSteps(hooked, backend="model").native_step() is None


def test_int8_copy_is_rebuilt_when_weights_change(model):
    m = copy.deepcopy(model)
    steps = DecodeSteps(m, quantize="int8")
    first = steps.forward_model()
    assert first is not m and steps.forward_model() is first
    with torch.no_grad():
        m.layers[0].mlp.up_proj.weight.mul_(2.0)
    second = steps.forward_model()
    assert second is not first
    assert torch.equal(second.layers[0].mlp.up_proj.weight, quantized_copy(m).layers[0].mlp.up_proj.weight)


@needs_cc
def test_int8_copy_rounds_lora_updates_as_the_native_step(model):
    from minigpt.model.lora import inject_lora

    m = inject_lora(copy.deepcopy(model), rank=2, alpha=4.0, targets=["q_proj", "down_proj"])
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.3)
    rounded = quantized_copy(m, "int8").eval()
    native = NativeDecoder(m, "int8")
    prompt = [5, 6, 7, 8]
    with torch.no_grad():
        logits, cache, batch = prefill(rounded, [prompt], PAD, budget=2)
        stepped = native.step([9], batch.positions, cache, batch.pads)
        assert (stepped[0] - alone(rounded, prompt + [9])).abs().max().item() < 1e-4


@needs_cc
@pytest.mark.parametrize("quantize", [None, "int8"])
def test_a_model_change_the_c_step_lacks_decodes_with_the_forward(model, monkeypatch, caplog, quantize):
    """Edit the MLP in model/gpt.py (here: ReLU^2 instead of SwiGLU, same parameters) without touching the
    kernel: the C step is checked against the forward before use, refused, and generation stays correct."""
    from minigpt.infer.backends import kernel_mismatch
    from minigpt.model import gpt

    steps = DecodeSteps(model, quantize)
    native = steps.native_step()
    assert isinstance(native, NativeDecoder) and kernel_mismatch(native, steps.forward_model()) < 1e-5

    monkeypatch.setattr(gpt.MLP, "forward", lambda self, x: self.down_proj(torch.relu(self.gate_proj(x)) ** 2))
    changed = DecodeSteps(model, quantize)
    with caplog.at_level("WARNING", logger="minigpt.infer.backends"):
        assert changed.native_step() is None
    assert "disagrees with GPT.forward" in caplog.text
    assert kernel_mismatch(NativeDecoder(model, quantize), changed.forward_model()) > 1e-2
    with pytest.raises(RuntimeError, match="disagrees with GPT.forward"):
        DecodeSteps(model, quantize, backend="native").native_step()


@needs_cc
def test_a_parameter_the_c_step_does_not_read_keeps_decoding_on_the_forward(model):
    from minigpt.infer.backends import unknown_parameters
    from minigpt.model.gpt import RMSNorm

    variant = copy.deepcopy(model)
    assert unknown_parameters(variant) == []
    variant.layers[1].self_attn.q_norm = RMSNorm(variant.config.head_dim, 1e-5)  # e.g. a QK-norm experiment
    assert unknown_parameters(variant) == ["layers.1.self_attn.q_norm.weight"]
    assert DecodeSteps(variant).native_step() is None
    with pytest.raises(RuntimeError, match="does not read layers.1.self_attn.q_norm.weight"):
        DecodeSteps(variant, backend="native").native_step()
