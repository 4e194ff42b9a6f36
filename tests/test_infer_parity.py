"""The C decode step against the model's one forward (`GPT.forward(cache=...)`), step by step.

Both decode the same prompts greedily, each feeding back its own choices: the logits agree to within
ATOL at every step and the chosen tokens are the same, at batch 1 and in a left-padded batch (with a
row leaving the batch midway), for float32 weights and for int8 weights (where the forward runs on
`quantized_copy`, the rounding the C step's int8 weights carry).
"""
from __future__ import annotations

import pytest
import torch

from conftest import mixed_corpus, tiny_gpt, tiny_tokenizer, train_briefly
from minigpt.infer.decode import prefill, step
from minigpt.infer.native_decode import NativeDecoder, load_library, quantized_copy
from minigpt.infer.sampling import greedy_tokens

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(load_library() is None, reason="no C compiler: the native step cannot be built")]

ATOL = 1e-4  # float32 sums in another order (the C step vectorises its dot products) over a few layers
STEPS = 12
PAD = 3


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer(vocab_size=301)


@pytest.fixture(scope="module")
def model(tok):
    """Trained briefly, with odd row counts (the kernel's remainder rows) and three query heads per K/V head."""
    m = tiny_gpt(tok.vocab_size, d_model=36, n_heads=3, n_kv_heads=1, d_ff=45, n_layers=2, max_seq_len=64)
    ids = sum((tok.encode(t) + [tok.eos_id] for t in mixed_corpus(n=60)), [])
    return train_briefly(m, [torch.tensor(ids[: 8 * 65]).view(8, 65)] * 30)


def greedy_run(forward, native, prompts, drop_after=None):
    """Greedy decoding through `step`; per step the (B, V) logits and the chosen tokens. With
    drop_after=(k, slots), only `slots` stay in the batch after step k (as finished rows leave)."""
    logits_seen, tokens_seen = [], []
    with torch.inference_mode():
        logits, cache, batch = prefill(forward, prompts, PAD, STEPS)
        for i in range(STEPS):
            toks = greedy_tokens(logits).tolist()
            logits_seen.append(logits.clone())
            tokens_seen.append(toks)
            if i == STEPS - 1:
                break
            if drop_after is not None and i == drop_after[0]:
                slots = drop_after[1]
                batch.keep(slots, cache)
                toks = [toks[b] for b in slots]
            logits = step(forward, native, toks, cache, batch)
    return logits_seen, tokens_seen


def assert_same_decoding(model, tok, texts, quantize=None, drop_after=None):
    forward = quantized_copy(model, quantize).eval() if quantize else model
    native = NativeDecoder(model, quantize)
    prompts = [tok.encode(t) for t in texts]
    ref_logits, ref_tokens = greedy_run(forward, None, prompts, drop_after)
    nat_logits, nat_tokens = greedy_run(forward, native, prompts, drop_after)
    assert nat_tokens == ref_tokens
    for i, (a, b) in enumerate(zip(nat_logits, ref_logits)):
        assert (a - b).abs().max().item() < ATOL, f"step {i}"
    return ref_tokens


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float32", "int8"])
def test_batch_of_one(model, tok, quantize):
    tokens = assert_same_decoding(model, tok, ["今天天气很好，"], quantize)
    assert len({t[0] for t in tokens}) > 1  # a varied continuation, not one token repeated


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float32", "int8"])
def test_left_padded_batch(model, tok, quantize):
    texts = ["长江、", "中国的首都是北京。我喜欢", "Hello, how"]
    assert len({len(tok.encode(t)) for t in texts}) == 3  # three different paddings
    assert_same_decoding(model, tok, texts, quantize)


@pytest.mark.parametrize("quantize", [None, "int8"], ids=["float32", "int8"])
def test_left_padded_batch_with_a_row_leaving(model, tok, quantize):
    texts = ["长江、", "中国的首都是北京。我喜欢", "Hello, how"]
    full = assert_same_decoding(model, tok, texts, quantize)
    cut = assert_same_decoding(model, tok, texts, quantize, drop_after=(4, [0, 2]))
    assert cut[:5] == full[:5]
    assert [t for t in cut[5:]] == [[t[0], t[2]] for t in full[5:]]  # the rows that stay decode as before


def test_int8_forward_rounds_as_the_native_step(model, tok):
    """The reference of the int8 runs is really rounded: float32 and int8 logits differ, yet by little."""
    ids = torch.tensor([tok.encode("今天天气很好，")])
    with torch.no_grad():
        exact = model(ids)[0][0, -1]
        rounded = quantized_copy(model, "int8")(ids)[0][0, -1]
    assert 1e-4 < (exact - rounded).abs().max().item() < 0.5
