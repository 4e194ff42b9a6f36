"""native_decode.py: the C decode step against the model's own forward, int8 rounding, the build and its fallback."""
from __future__ import annotations

import logging

import pytest
import torch

from conftest import tiny_gpt, tiny_tokenizer, train_briefly
from minigpt import native as kernels
from minigpt.infer import native_decode
from minigpt.infer.backends import DecodeSteps
from minigpt.infer.decode import Batch, model_step
from minigpt.infer.generate import GenerationConfig, TextGenerator
from minigpt.model.gpt import KVCache
from minigpt.infer.native_decode import NativeDecoder, dequantize, quantize_int8, quantized_copy

pytestmark = pytest.mark.usefixtures("one_thread")

GREEDY = GenerationConfig(max_new_tokens=20, do_sample=False, ignore_eos=True)
# Row counts that are not multiples of four exercise the kernel's remainder rows: qkv (3+2)*12 = 60,
# gate/up 2*45 = 90, vocab 301; three query heads share one K/V head.
ODD_SHAPE = dict(d_model=36, n_heads=3, n_kv_heads=1, d_ff=45, n_layers=2, max_seq_len=48)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(vocab_size=301)


def trained(tok, steps: int = 40, **shape):
    """A tiny model trained briefly on the test corpus: varied, peaked next-token choices (a random
    model's greedy output just repeats a token), so token-for-token comparisons mean something."""
    from conftest import mixed_corpus

    model = tiny_gpt(tok.vocab_size, **{**shape, "max_seq_len": 64})
    ids = sum((tok.encode(t) + [tok.eos_id] for t in mixed_corpus(n=60)), [])
    data = torch.tensor(ids[: 8 * 65]).view(8, 65)
    return train_briefly(model, [data] * steps)


@pytest.fixture(scope="module")
def odd_model(tok):
    return trained(tok, **ODD_SHAPE)


def step_logits_vs_forward(model, decoder_step, ids: list[int], prefill: int) -> float:
    """Max |logit difference| between decode steps after a prefill and the full forward at each position."""
    x = torch.tensor([ids])
    cache = KVCache.empty(model.config, 1, len(ids) + 1, "cpu", torch.float32)
    worst = 0.0
    with torch.no_grad():
        full, _ = model(x)
        model(x[:, :prefill], cache=cache)
        for t in range(prefill, len(ids)):
            worst = max(worst, (decoder_step(ids[t], t, cache) - full[:, t]).abs().max().item())
    return worst


@pytest.mark.parametrize("shape", [{}, ODD_SHAPE], ids=["gqa-2-groups", "odd-rows"])
def test_native_fp32_step_matches_full_forward(tok, shape):
    model = tiny_gpt(tok.vocab_size, **shape)
    nd = NativeDecoder(model)
    ids = tok.encode("中国的首都是北京。我喜欢读书和写字。")[:30]
    assert step_logits_vs_forward(model, nd.step, ids, prefill=4) < 1e-5


@pytest.mark.parametrize("variant", [dict(qk_norm=True), dict(mlp="relu2"), dict(qk_norm=True, mlp="relu2")],
                         ids=["qk_norm", "relu2", "qk_norm+relu2"])
def test_native_step_computes_model_variants(tok, variant):
    """The C step's q/k norms and ReLU^2 MLP against the forward, in float32 and int8 (odd rows: relu2's
    up projection alone has 45 rows, not a multiple of four)."""
    model = tiny_gpt(tok.vocab_size, **ODD_SHAPE, **variant)
    with torch.no_grad():  # norm weights away from 1, so a step that skipped them would differ
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.copy_(torch.linspace(0.3, 2.0, p.numel()))
    ids = tok.encode("中国的首都是北京。我喜欢读书和写字。")[:30]
    assert step_logits_vs_forward(model, NativeDecoder(model).step, ids, prefill=4) < 1e-5
    rounded = quantized_copy(model, "int8")
    assert step_logits_vs_forward(rounded, NativeDecoder(model, quantize="int8").step, ids, prefill=3) < 1e-4
    assert DecodeSteps(model).native_step() is not None  # generation picks the C step for the variant


def test_native_int8_step_matches_rounded_model(tok):
    model = tiny_gpt(tok.vocab_size, **ODD_SHAPE)
    ids = tok.encode("今天天气很好，我们去公园散步。")[:30]
    rounded = quantized_copy(model, "int8")
    nd = NativeDecoder(model, quantize="int8")
    # The C step reads int8 weights; the rounded float copy's forward is the reference.
    assert step_logits_vs_forward(rounded, nd.step, ids, prefill=3) < 1e-4
    # The model step with int8 (other devices, decode_backend="model") runs the forward of the same rounding.
    forward = DecodeSteps(model, quantize="int8").forward_model()
    assert forward is not model
    assert step_logits_vs_forward(
        rounded, lambda t, p, c: model_step(forward, [t], c, Batch([0], [p], [0])), ids, prefill=3) < 1e-4
    # And the rounding is real: the unrounded model differs.
    assert step_logits_vs_forward(model, NativeDecoder(model).step, ids, 3) < step_logits_vs_forward(rounded, NativeDecoder(model).step, ids, 3)


def test_quantize_int8_rounds_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(7, 33)
    w[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.abs().max().item() == 127
    assert torch.equal(q[3], torch.zeros(33, dtype=torch.int8))
    err = (dequantize(q, scale) - w).abs()
    assert bool((err <= scale[:, None] / 2 + 1e-7).all())
    assert torch.allclose(scale[:3], w[:3].abs().amax(1) / 127)


def test_native_generation_equals_model_step(tok, odd_model):
    model = odd_model
    native = TextGenerator(model, tok, decode_backend="native")
    torch_gen = TextGenerator(model, tok, decode_backend="model")
    for prompt in ["长江、", "Hello", "你好，很高兴"]:
        ids = tok.encode(prompt)
        assert native.generate_ids(ids, GREEDY) == torch_gen.generate_ids(ids, GREEDY)
        assert native.last_stats["backend"] == "native" and torch_gen.last_stats["backend"] == "model"


def test_native_batch_with_left_padding_matches_model_step(tok, odd_model):
    """Rows of different lengths (left padding), rows finishing at different steps (dropped from the cache)."""
    model = odd_model
    prompts = [tok.encode(p) for p in ["长江、", "今天天气很好，我们去", "Hello, how are you", "你"]]
    native = TextGenerator(model, tok, decode_backend="native")
    torch_gen = TextGenerator(model, tok, decode_backend="model")
    out = native.generate_ids(prompts, GREEDY)
    assert native.last_stats["backend"] == "native" and native.last_stats["batch_size"] == 4
    assert out == torch_gen.generate_ids(prompts, GREEDY) == [native.generate_ids(p, GREEDY) for p in prompts]
    # Per-row stops at <|endoftext|>: rows leave the batch (and the cache) at different steps.
    cfg = GREEDY.replace(ignore_eos=False)
    stopped = native.generate_ids(prompts, cfg)
    assert len({len(r) for r in stopped}) >= 3 and max(map(len, stopped)) == GREEDY.max_new_tokens
    assert stopped == torch_gen.generate_ids(prompts, cfg) == [native.generate_ids(p, cfg) for p in prompts]


def test_native_batch_step_logits_match_full_forward(tok):
    model = tiny_gpt(tok.vocab_size, **ODD_SHAPE)
    a, b = tok.encode("中国的首都是北京。")[:10], tok.encode("Hello, how are you today?")[:7]
    nd = NativeDecoder(model)
    cache = KVCache.empty(model.config, 2, 12, "cpu", torch.float32)
    pad_b = len(a) - len(b)
    ids = torch.tensor([a[:-1], [0] * pad_b + b[:-1]])
    valid = torch.ones(2, len(a) - 1, dtype=torch.bool)
    valid[1, :pad_b] = False
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    mask = (torch.ones(len(a) - 1, len(a) - 1, dtype=torch.bool).tril() & valid[:, None, None, :]) | torch.eye(len(a) - 1, dtype=torch.bool)
    with torch.no_grad():
        model(ids, attn_mask=mask, positions=positions, cache=cache)
        logits = nd.step([a[-1], b[-1]], [len(a) - 1, len(b) - 1], cache, [0, pad_b]).clone()
        full_a, _ = model(torch.tensor([a]))
        full_b, _ = model(torch.tensor([b]))
    assert (logits[0] - full_a[0, -1]).abs().max().item() < 1e-5
    assert (logits[1] - full_b[0, -1]).abs().max().item() < 1e-5


def test_int8_batch_equals_one_by_one(tok, odd_model):
    model = odd_model
    gen = TextGenerator(model, tok, quantize="int8")
    prompts = [tok.encode(p) for p in ["长江、", "今天天气很好", "Hello, how"]]
    singles = [gen.generate_ids(p, GREEDY) for p in prompts]
    assert gen.last_stats["backend"] == "native" and gen.last_stats["quantize"] == "int8"
    assert gen.generate_ids(prompts, GREEDY) == singles
    torch_int8 = TextGenerator(model, tok, quantize="int8", decode_backend="model")  # the same rounding in PyTorch
    assert torch_int8.generate_ids(prompts, GREEDY) == singles
    assert torch_int8.last_stats["backend"] == "model"


def test_native_decoder_refreshes_after_weights_change(tok):
    model = tiny_gpt(tok.vocab_size)
    gen = TextGenerator(model, tok, decode_backend="native")
    ids = tok.encode("你好，很高兴认识你。")
    gen.generate_ids(ids, GREEDY)
    old = gen.steps.native
    with torch.no_grad():  # in place, as more training would; the fused q/k/v and gate/up copies go stale
        for blk in model.layers:
            blk.mlp.gate_proj.weight.mul_(-3.0)
            blk.self_attn.v_proj.weight.mul_(2.0)
    gen.generate_ids(ids, GREEDY)
    assert gen.steps.native is not old
    assert step_logits_vs_forward(model, gen.steps.native.step, ids, prefill=2) < 1e-5
    assert step_logits_vs_forward(model, old.step, ids, prefill=2) > 1e-3


def test_bad_options_are_named(tok):
    model = tiny_gpt(tok.vocab_size)
    with pytest.raises(ValueError, match="quantize='int4'.*int8"):
        TextGenerator(model, tok, quantize="int4")
    with pytest.raises(ValueError, match="decode_backend='gpu'.*auto, native, model"):
        TextGenerator(model, tok, decode_backend="gpu")
    with pytest.raises(RuntimeError, match="decode_backend='native' needs a float32 model on the CPU"):
        TextGenerator(tiny_gpt(tok.vocab_size).to(torch.bfloat16), tok, decode_backend="native").generate_ids([5, 6], GREEDY)
    nd = NativeDecoder(model)
    cache = KVCache.empty(model.config, 1, 4, "cpu", torch.float32)
    with pytest.raises(ValueError, match=r"refused tokens=\[999\]"):
        nd.step(999, 0, cache)
    with pytest.raises(ValueError, match=r"2 tokens, 1 positions and 1 pads for a cache of 1 rows"):
        nd.step([5, 6], [0], cache, [0])
    cache.length = 4
    with pytest.raises(ValueError, match="slot=4.*capacity 4"):
        nd.step(5, 4, cache)


@pytest.fixture
def fresh_build_state(monkeypatch, tmp_path):
    """A private kernel cache and a not-yet-loaded library, restored afterwards."""
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native_decode, "_library", None)
    monkeypatch.setattr(native_decode, "_load_failed", False)
    return tmp_path


def test_build_is_cached_by_source_and_machine(fresh_build_state):
    first = kernels.build_library(native_decode.SOURCE)
    assert first.parent == fresh_build_state / "cache" / "kernels" and first.exists()
    mtime = first.stat().st_mtime_ns
    assert kernels.build_library(native_decode.SOURCE) == first and first.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary files left


def test_compile_error_names_the_source(fresh_build_state, monkeypatch):
    broken = fresh_build_state / "broken.c"
    broken.write_text("int mg_decode_step( {\n")
    with pytest.raises(RuntimeError, match=r"compiling .*broken\.c .*failed"):
        kernels.build_library(broken)
    assert not list((fresh_build_state / "cache" / "kernels").iterdir())  # nothing half-written


def test_without_a_compiler_generation_falls_back(fresh_build_state, monkeypatch, tok, caplog):
    monkeypatch.setattr(kernels, "_compiler", lambda: None)
    model = tiny_gpt(tok.vocab_size)
    gen = TextGenerator(model, tok)
    with caplog.at_level(logging.WARNING, logger="minigpt.infer.native_decode"):
        out = gen.generate_ids(tok.encode("你好"), GREEDY)
    assert gen.last_stats["backend"] == "model"
    assert "native decode step unavailable" in caplog.text and "no C compiler" in caplog.text
    assert out == TextGenerator(model, tok, decode_backend="model").generate_ids(tok.encode("你好"), GREEDY)
    with pytest.raises(RuntimeError, match="C compiler"):
        TextGenerator(model, tok, decode_backend="native").generate_ids(tok.encode("你好"), GREEDY)


def test_int8_costs_little_on_a_trained_model(tok, odd_model):
    """On a model trained a little, int8 rounding changes the loss by far less than training does."""
    from conftest import mixed_corpus
    from minigpt.infer.evaluate import evaluate_texts

    texts = mixed_corpus(n=40, seed=1)
    fp32 = evaluate_texts(odd_model, tok, texts, seq_len=64)["loss"]
    int8 = evaluate_texts(quantized_copy(odd_model, "int8"), tok, texts, seq_len=64)["loss"]
    untrained = evaluate_texts(tiny_gpt(tok.vocab_size, **{**ODD_SHAPE, "max_seq_len": 64}), tok, texts, seq_len=64)["loss"]
    assert untrained - fp32 > 1.0  # it learned something
    assert abs(int8 - fp32) < 0.01


def test_float32_generation_keeps_one_copy_of_the_fused_weights(tok):
    """The model step reads the model's own parameters; the C step reads the float32 ones it needs
    unchanged in place and holds the concatenated q/k/v and gate/up weights once."""
    model = tiny_gpt(tok.vocab_size)
    gen = TextGenerator(model, tok, decode_backend="native")
    gen.generate_ids(tok.encode("你好"), GREEDY)
    assert gen.steps.forward_model() is model
    native_ptrs = {t.data_ptr() for t in gen.steps.native._keep}
    in_place = {model.embed_tokens.weight.data_ptr(), model.norm.weight.data_ptr()}
    for blk in model.layers:
        in_place |= {blk.self_attn.o_proj.weight.data_ptr(), blk.mlp.down_proj.weight.data_ptr(),
                     blk.input_layernorm.weight.data_ptr(), blk.post_attention_layernorm.weight.data_ptr()}
    assert in_place <= native_ptrs
    fused = [t for t in gen.steps.native._keep if t.dim() == 2 and t.shape[0] in (
        (model.config.n_heads + 2 * model.config.n_kv_heads) * model.config.head_dim, 2 * model.config.d_ff)]
    assert len(fused) == 2 * model.config.n_layers  # one q/k/v and one gate/up matrix a layer, no second copy
    int8 = TextGenerator(model, tok, quantize="int8")
    int8.generate_ids(tok.encode("你好"), GREEDY)
    assert any(t.dtype == torch.int8 for t in int8.steps.native._keep)


def test_generation_includes_lora_adapters(tok, odd_model):
    """Samples taken while an adapter trains (sample_interval in 04) must use the adapter's update."""
    import copy

    from minigpt.model.lora import inject_lora, merge_lora

    model = copy.deepcopy(odd_model)
    inject_lora(model, rank=4, alpha=8.0)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0.0, 0.3)  # a trained-looking adapter (fresh ones are zero, a no-op)
    ids = tok.encode("今天天气很好")
    with_adapter = [TextGenerator(model, tok, decode_backend=b).generate_ids(ids, GREEDY) for b in ("native", "model")]
    merged = merge_lora(copy.deepcopy(model))
    expected = TextGenerator(merged, tok, decode_backend="model").generate_ids(ids, GREEDY)
    assert with_adapter == [expected, expected]
    assert expected != TextGenerator(odd_model, tok).generate_ids(ids, GREEDY)  # the adapter matters
    nd = NativeDecoder(model)
    assert step_logits_vs_forward(model, nd.step, ids, prefill=2) < 1e-4


def test_bench_generate_without_transformers_times_minigpt_alone(tok, monkeypatch, caplog, tmp_path):
    import importlib.util

    from minigpt.bench.generate import bench_generate

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="minigpt.bench.generate"):
        res = bench_generate(tiny_gpt(tok.vocab_size), tok, hf_dir=tmp_path, prompt="你好", new_tokens=3,
                             batch_sizes=(1, 2), repeats=1)
    assert "transformers is not installed" in caplog.text
    assert res["hf"] == res["hf_sample"] == res["ratio"] == {}
    assert set(res["minigpt"]) == {1, 2} and set(res["int8"]) == set(res["sample"]) == set(res["model_step"]) == {1}
    assert res["backend"] == {1: "native", 2: "native"} and all(v > 0 for v in res["minigpt"].values())


def test_generator_follows_weights_changed_by_a_fused_optimizer():
    """torch's fused AdamW on the CPU updates parameters without moving their version counters: a generator kept
    across training steps (RL rollouts) must still decode with the new weights, not stale C-step copies."""
    from conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_gpt(tok.vocab_size, max_seq_len=64)
    kept = TextGenerator(model, tok)
    greedy = GenerationConfig(max_new_tokens=12, do_sample=False)
    before = kept.generate_ids([5, 9, 11], greedy)
    assert kept.last_stats["backend"] == "native"
    opt = torch.optim.AdamW(model.parameters(), lr=0.5, fused=True)
    model(torch.tensor([[5, 9, 11, 4]]), torch.tensor([[9, 11, 4, 7]]))[1].backward()
    versions = [p._version for p in model.parameters()]
    opt.step()
    assert [p._version for p in model.parameters()] == versions  # the counters did not move
    after = kept.generate_ids([5, 9, 11], greedy)
    assert after == TextGenerator(model, tok).generate_ids([5, 9, 11], greedy) and after != before


def test_generator_follows_weights_changed_by_the_trainers_muon():
    """Muon (the trainer's own optimizer, a torch Optimizer subclass) is counted by the same post-step hook."""
    from minigpt.config import TrainConfig
    from minigpt.train.optim import build_optimizer

    tok = tiny_tokenizer()
    model = tiny_gpt(tok.vocab_size, max_seq_len=64)
    kept = TextGenerator(model, tok)
    greedy = GenerationConfig(max_new_tokens=12, do_sample=False)
    before = kept.generate_ids([5, 9, 11], greedy)
    opt = build_optimizer(model, TrainConfig.from_flat(optimizer_type="muon", learning_rate=0.5), torch.device("cpu"))
    model(torch.tensor([[5, 9, 11, 4]]), torch.tensor([[9, 11, 4, 7]]))[1].backward()
    opt.step()
    after = kept.generate_ids([5, 9, 11], greedy)
    assert after == TextGenerator(model, tok).generate_ids([5, 9, 11], greedy) and after != before


def test_repeated_prompts_are_prefilled_once_and_decode_as_alone(monkeypatch):
    """GRPO's rollouts repeat each prompt group_size times: prefill runs each distinct prompt once (the forward sees
    2 rows, not 6) and copies its keys, values and logits, and every row decodes as it would alone."""
    from minigpt.infer import decode as decode_mod

    tok = tiny_tokenizer()
    model = tiny_gpt(tok.vocab_size, max_seq_len=64)
    a, b = [5, 9, 11, 4], [7, 3]
    prompts = [a, a, b, a, b, b]
    seen = []
    forward = type(model).forward

    def counting(self, ids, *args, **kwargs):
        seen.append(ids.shape[0])
        return forward(self, ids, *args, **kwargs)

    gen = TextGenerator(model, tok)
    greedy = GenerationConfig(max_new_tokens=8, do_sample=False)
    alone = {tuple(p): gen.generate_ids(p, greedy) for p in (a, b)}
    monkeypatch.setattr(type(model), "forward", counting)
    logits, cache, batch = decode_mod.prefill(model, prompts, tok.pad_id, budget=8)
    assert seen == [2] and logits.shape[0] == 6 and cache.keys[0].shape[0] == 6
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[2], logits[4]) and not torch.equal(logits[0], logits[2])
    assert torch.equal(cache.keys[1][3], cache.keys[1][0]) and batch.pads == [0, 0, 2, 0, 2, 2]
    monkeypatch.setattr(type(model), "forward", forward)
    assert gen.generate_ids(prompts, greedy) == [alone[tuple(p)] for p in prompts]
