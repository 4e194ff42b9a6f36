"""Generation's edges (issue 31, items 7 and 8): in a batch, each row gets the budget it would get alone; bad
stop strings, out-of-range token ids and lone surrogates are messages naming what is wrong, not raw errors."""
from __future__ import annotations

import pytest
import torch

from minigpt.infer.config import GenerationConfig
from minigpt.infer.generate import TextGenerator
from conftest import tiny_gpt, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gen():
    tok = tiny_tokenizer()
    model = tiny_gpt(tok.vocab_size, d_model=48, max_seq_len=32)  # context 32, as in the issue
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return TextGenerator(model, tok, decode_backend="model")


def test_long_prompt_does_not_cut_the_other_rows(gen):
    cfg = GenerationConfig(max_new_tokens=20, do_sample=False, ignore_eos=True)
    long = "x" * 31
    assert len(gen.encode_prompt(long)) > 12  # leaves less room than 20 new tokens in a context of 32
    alone = [gen.generate("中国", cfg), gen.generate(long, cfg)]
    together = gen.batch_generate(["中国", long, "你好"], cfg)
    assert together[:2] == alone and together[2] == gen.generate("你好", cfg)
    assert len(gen.generate_ids(gen.encode_prompt("中国"), cfg)) == 20  # the short row's whole budget
    assert together[0]  # the empty first row


def test_long_row_is_told_why_it_stopped(gen, caplog):
    cfg = GenerationConfig(max_new_tokens=20, do_sample=False, ignore_eos=True)
    with caplog.at_level("WARNING", logger="minigpt.infer.generate"):
        gen.batch_generate(["中国", "x" * 31], cfg)
    assert "max_new_tokens=20 does not fit the context (max_seq_len=32" in caplog.text
    assert caplog.text.count("does not fit the context") == 1  # the long row only


def test_stop_strings_none_is_a_message(gen):
    for call in (lambda c: gen.generate("中国", c), lambda c: gen.batch_generate(["中国"], c),
                 lambda c: gen.generate_ids([5, 6], c), lambda c: list(gen.stream_ids([5, 6], c))):
        cfg = GenerationConfig(max_new_tokens=3)
        cfg.stop_strings = [None]  # changed after construction: generation checks it again
        with pytest.raises(ValueError, match=r"stop_strings: expected a list of non-empty strings, got \[None\]"):
            call(cfg)


@pytest.mark.parametrize("bad", [10**6, -1])
def test_token_id_out_of_range_names_id_and_vocab(gen, bad):
    V = gen.cfg.vocab_size
    msg = rf"prompt_ids\[0\]: token id {bad} is outside the vocabulary: expected 0 \.\. {V - 1} \(vocab_size {V}\)"
    with pytest.raises(ValueError, match=msg):
        gen.generate_ids([[bad]])
    with pytest.raises(ValueError, match=msg):
        list(gen.stream_ids([5, bad]))
    with pytest.raises(TypeError, match=r"prompt_ids\[1\]: expected token ids \(integers\), got '7'"):
        gen.generate_ids([[5], ["7"]])


def test_lone_surrogate_is_a_message(gen):
    tok = gen.tokenizer
    with pytest.raises(ValueError, match=r"texts\[1\]: character 1 is a lone surrogate \(U\+D800\)"):
        tok.encode_batch(["好", "a\ud800b"])
    with pytest.raises(ValueError, match=r"text: character 0 is a lone surrogate \(U\+DC80\)"):
        tok.encode("\udc80")
    with pytest.raises(TypeError, match=r"texts\[0\]: expected a string, got int"):
        tok.encode_batch([3])
    assert tok.encode_batch(["好", "ab"]) == [tok.encode("好"), tok.encode("ab")]
