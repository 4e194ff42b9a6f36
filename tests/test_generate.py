"""Generation: KV cache vs no cache, sampling filters, batches, stops, UTF-8 streaming, chat, bad input, CLI."""
from __future__ import annotations

import codecs
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import train_briefly
from minigpt import GPT, ModelConfig
from minigpt.train.checkpoint import save_checkpoint
from minigpt.infer.generate import ChatSession, GenerationConfig, TextGenerator, read_prompts_file
from minigpt.infer.sampling import (
    Sampler,
    Scores,
    apply_processors,
    apply_repetition_penalty,
    keep_top_k,
    keep_top_p,
    logits_processors,
    ngram_bans,
    sample_from_logits,
)
from sampling_oracle import reference_filters
from minigpt.infer.streaming import RowText
from minigpt.data.tokenizer import TokenizerConfig, train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = [
    "长江、黄河是中国的两条大河。", "今天天气很好，我们去公园散步。", "你好，很高兴认识你。", "中国的首都是北京。",
    "人工智能正在改变世界。", "春天来了，花都开了。", "我喜欢读书和写字。", "上海是一座美丽的城市。",
    "他每天早上六点起床。", "这本书非常有意思。", "Hello, how are you today?", "The river flows to the sea.",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


def corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.sample(SENTENCES, 3)) for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(corpus(), TokenizerConfig(tokenizer_vocab_size=360, min_frequency=2))


def trained_model(tok, steps: int = 40, seed: int = 0) -> GPT:
    """A tiny model trained for a few steps: peaked, varied distributions (not a random model's loops)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains as fast on one thread, and a busy machine hurts two
    try:
        return _train(tok, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train(tok, steps: int, seed: int) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=96)
    model = GPT(cfg)
    ids = []
    for t in corpus(200, seed=1):
        ids += tok.encode(t) + [tok.eos_id]
    data = torch.tensor(ids)
    g = torch.Generator().manual_seed(seed)

    def batches():
        for _ in range(steps):
            starts = torch.randint(0, len(data) - 33, (16,), generator=g)
            yield torch.stack([data[s:s + 33] for s in starts])

    return train_briefly(model, batches())


@pytest.fixture(scope="module")
def model(tok):
    return trained_model(tok)


@pytest.fixture(scope="module")
def gen(model, tok):
    return TextGenerator(model, tok)


GREEDY = GenerationConfig(do_sample=False, max_new_tokens=40, ignore_eos=True)


def no_cache_greedy(model: GPT, ids: list[int], n: int) -> list[int]:
    seq, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
            out.append(seq[-1])
    return out


# ---------------------------------------------------------------- KV cache


def test_kv_cache_equals_no_cache_greedy(gen, model, tok):
    for prompt in ["长江、", "今天天气很好，我们", "Hello"]:
        ids = tok.encode(prompt)
        assert gen.generate_ids(ids, GREEDY) == no_cache_greedy(model, ids, GREEDY.max_new_tokens)


def test_model_step_logits_match_full_forward(gen, model, tok):
    from minigpt.infer.decode import Batch, model_step
    from minigpt.model.gpt import KVCache

    ids = torch.tensor([tok.encode("中国的首都是北京。我喜欢读书")])
    cache = KVCache.empty(model.config, 1, 40, "cpu", torch.float32)
    batch = Batch.left_padded([5])
    with torch.no_grad():
        full, _ = model(ids)
        model(ids[:, :5], cache=cache)
        for t in range(5, ids.shape[1]):
            step = model_step(model, [int(ids[0, t])], cache, batch)
            batch.advance()
            assert torch.allclose(step, full[:, t], atol=1e-5), t


def test_decoder_refreshes_after_weights_change(tok):
    model = trained_model(tok, steps=5)
    gen = TextGenerator(model, tok)
    ids = tok.encode("你好")
    gen.generate_ids(ids, GREEDY.replace(max_new_tokens=3))
    with torch.no_grad():
        for blk in model.layers:
            blk.mlp.down_proj.weight.mul_(-3.0)
    assert gen.generate_ids(ids, GREEDY.replace(max_new_tokens=10)) == no_cache_greedy(model, ids, 10)


# ---------------------------------------------------------------- filters on hand-made distributions


def test_top_k_on_the_vocabulary():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, 2.5]])
    out = keep_top_k(Scores(logits), 2)
    assert out.ids.tolist() == [[1, 4]] and out.logits.tolist() == [[3.0, 2.5]]  # the candidates, best first
    assert keep_top_k(Scores(logits), 0).logits is logits


def test_top_p_on_the_vocabulary():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    keep = lambda p: (~torch.isinf(keep_top_p(Scores(logits), p).logits[0])).nonzero().flatten().tolist()
    assert keep(0.4) == [1]            # 0.5 alone reaches 0.4
    assert keep(0.75) == [1, 3]        # 0.5 + 0.3
    assert keep(0.85) == [1, 2, 3]     # + 0.15
    assert keep(1.0) == [0, 1, 2, 3]
    assert keep(1e-6) == [1]           # always at least the best token


def test_temperature_and_combined_filters():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    out = apply_processors(logits_processors(GenerationConfig(temperature=0.5, top_k=3, top_p=1.0)), Scores(logits))
    assert out.ids.tolist() == [[0, 1, 2]] and torch.allclose(out.logits, torch.tensor([[4.0, 2.0, 0.0]]))


def _as_vocabulary(s: Scores, vocab: int) -> torch.Tensor:
    return s.logits if s.ids is None else torch.full((s.logits.shape[0], vocab), float("-inf")).scatter(-1, s.ids, s.logits)


def test_the_processors_keep_what_the_reference_filters_keep():
    """The sampler's shortcuts (top-p on the k candidates only; a tie at the k-th value falls back to the whole
    vocabulary) keep exactly the tokens and logits of the plain whole-vocabulary filters (tests/sampling_oracle.py)."""
    torch.manual_seed(0)
    rows = torch.randn(6, 40) * 3
    rows[1, :5] = float("-inf")                   # banned tokens (n-gram bans, penalties)
    for cfg in [GenerationConfig(temperature=0.7, top_k=5, top_p=0.9), GenerationConfig(temperature=1.0, top_k=12, top_p=0.5),
                GenerationConfig(temperature=1.3, top_k=3, top_p=1.0), GenerationConfig(temperature=0.5, top_k=30, top_p=0.95),
                GenerationConfig(temperature=0.9, top_k=0, top_p=0.8)]:
        out = apply_processors(logits_processors(cfg), Scores(rows))
        assert (out.ids is None) == (cfg.top_k == 0)
        got, want = _as_vocabulary(out, 40), reference_filters(rows, cfg.temperature, cfg.top_k, cfg.top_p)
        assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.allclose(got[~torch.isinf(got)], want[~torch.isinf(want)])
    tie = torch.tensor([[3.0, 2.0, 2.0, 1.0]])
    out = apply_processors(logits_processors(GenerationConfig(top_k=2, top_p=1.0)), Scores(tie))
    assert out.ids is None and torch.isinf(out.logits).tolist() == [[False, False, False, True]]


def test_sampled_frequencies():
    probs = torch.tensor([0.4, 0.25, 0.2, 0.1, 0.05])
    logits = probs.log().expand(20000, 5).contiguous()
    prompts = [[0]] * 20000
    cfg = GenerationConfig(temperature=1.0, top_k=3, top_p=1.0, seed=0)
    draws = torch.tensor(Sampler(cfg, prompts, 5)(logits))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    kept = probs[:3] / probs[:3].sum()              # top-3, renormalised
    assert torch.allclose(freq[:3], kept, atol=0.015) and freq[3:].sum() == 0
    draws = Sampler(GenerationConfig(temperature=1.0, top_k=4, top_p=0.6, seed=1), prompts, 5)(logits)
    assert set(draws) == {0, 1}                     # 0.4 + 0.25 reaches 0.6: the nucleus is two tokens


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0]]  # positive divided, negative multiplied, unseen unchanged


def test_no_repeat_ngram():
    assert sorted(ngram_bans([5, 6, 7, 5, 6], 3)) == [7]   # "5 6 7" seen: after "5 6", 7 is banned
    assert ngram_bans([5, 6, 7], 3) == []
    assert sorted(ngram_bans([1, 2, 1, 3, 1], 2)) == [2, 3]


def test_no_repeat_ngram_in_generation(gen, tok):
    cfg = GenerationConfig(do_sample=False, max_new_tokens=40, ignore_eos=True, no_repeat_ngram_size=2)
    prompt = tok.encode("长江、")
    out = gen.generate_ids(prompt, cfg)
    seq = prompt + out
    bigrams = list(zip(seq, seq[1:]))
    assert len(bigrams) == len(set(bigrams))


def test_sampling_frequencies_and_seed():
    probs = torch.tensor([0.5, 0.3, 0.2, 0.0])
    logits = probs.log().expand(20000, 4).contiguous()
    g = torch.Generator().manual_seed(0)
    draws = sample_from_logits(logits, g)
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.015)
    assert freq[3] == 0
    a = sample_from_logits(logits[:50], torch.Generator().manual_seed(7))
    b = sample_from_logits(logits[:50], torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_seeded_sampling_is_reproducible(gen):
    cfg = GenerationConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=30, seed=123, ignore_eos=True)
    a, b = gen.generate("你好", cfg), gen.generate("你好", cfg)
    assert a == b
    others = {gen.generate("你好", cfg.replace(seed=s)) for s in range(5)}
    assert len(others) > 1


# ---------------------------------------------------------------- batches and stops


PROMPTS = ["长江、", "今天天气很好，我们去", "Hello", "", "中国的首都是北京。人工智能"]


def test_batch_equals_one_by_one_greedy(gen, tok):
    singles = [gen.generate(p, GREEDY) for p in PROMPTS]
    assert gen.batch_generate(PROMPTS, GREEDY) == singles
    assert gen.batch_generate(PROMPTS, GREEDY, batch_size=2) == singles
    ids = [tok.encode(p) or [tok.eos_id] for p in PROMPTS]
    assert gen.generate_ids(ids, GREEDY) == [gen.generate_ids(i, GREEDY) for i in ids]


def test_per_row_stopping(gen, tok):
    ids = [tok.encode(p) or [tok.eos_id] for p in PROMPTS]
    full = [gen.generate_ids(i, GREEDY) for i in ids]
    stop = full[0][5]  # row 0 stops at its 6th token; other rows stop wherever that id appears
    cfg = GREEDY.replace(stop_token_ids=[stop])
    batch = gen.generate_ids(ids, cfg)
    for f, b in zip(full, batch):
        expected = f[:f.index(stop) + 1] if stop in f else f
        assert b == expected
    assert len(batch[0]) == full[0].index(stop) + 1


def test_stops_at_eos_by_default(gen, tok):
    out = gen.generate_ids(tok.encode("你好，很高兴认识你。"), GenerationConfig(do_sample=False, max_new_tokens=80))
    if tok.eos_id in out or tok.im_end_id in out:
        assert out[-1] in (tok.eos_id, tok.im_end_id)
        assert out.count(tok.eos_id) + out.count(tok.im_end_id) == 1


def test_stop_strings(gen):
    full = gen.generate("今天天气", GREEDY)
    assert len(full) > 6
    stop = full[3:5]
    cut = full[:full.index(stop)]
    cfg = GREEDY.replace(stop_strings=[stop, "不会出现的字符串"])
    assert gen.generate("今天天气", cfg) == cut
    pieces = list(gen.stream("今天天气", cfg))
    assert "".join(pieces) == cut
    assert gen.batch_generate(["今天天气", "Hello"], cfg)[0] == cut


def test_stop_string_across_tokens_is_held_back():
    """A piece that might begin a stop string is not emitted until it is known not to."""
    class CharTok:  # one character a token, ids are code points
        def token_bytes(self, i):
            return chr(i).encode()

    row = RowText(CharTok(), stop_ids=set(), stop_strings=["END"], special_ids=set(), skip_special=True)
    emitted = []
    for ch in "abENxE":
        row.push(ord(ch))
        emitted.append(row.pending())
    assert emitted == ["a", "b", "", "", "ENx", ""]
    for ch in "ND":
        row.push(ord(ch))
    assert row.done and row.text == "abENx" and row.pending() == ""


# ---------------------------------------------------------------- UTF-8


def scripted_model(tok, chain: list[int], d_model: int = 64) -> GPT:
    """A model whose greedy output follows `chain`: after chain[i] it predicts chain[i+1].

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's embedding;
    the (untied) head row of chain[i+1] points along chain[i]'s embedding.
    """
    assert len(set(chain)) == len(chain), "chain tokens must be distinct"
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=d_model, n_layers=1, n_heads=4, n_kv_heads=2,
                      max_seq_len=64, tie_word_embeddings=False)
    m = GPT(cfg)
    with torch.no_grad():
        m.layers[0].self_attn.o_proj.weight.zero_()
        m.layers[0].mlp.down_proj.weight.zero_()
        m.embed_tokens.weight.normal_(0, 1.0)
        m.lm_head.weight.zero_()
        for a, b in zip(chain, chain[1:]):
            e = m.embed_tokens.weight[a]
            m.lm_head.weight[b] = 20 * e / e.norm()
    return m.eval()


def test_utf8_safe_streaming_chinese(tok):
    text = "鬱㑇"  # characters the tokenizer never saw: each is 3 byte tokens (all 6 distinct)
    ids = tok.encode(text)
    assert len(ids) == 6
    chain = [tok.encode("A")[0]] + ids + [tok.eos_id]
    gen = TextGenerator(scripted_model(tok, chain), tok)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=20)
    pieces = list(gen.stream("A", cfg))
    assert pieces == ["鬱", "㑇"]  # never a half character, never U+FFFD
    got = []
    assert gen.generate("A", cfg, callback=got.append) == text
    assert got == pieces
    assert gen.generate_ids(tok.encode("A"), cfg) == ids + [tok.eos_id]


def test_streaming_equals_generate_on_sampled_chinese(gen, tok):
    cfg = GenerationConfig(temperature=1.5, top_k=0, top_p=1.0, max_new_tokens=60, seed=3, ignore_eos=True)
    pieces = list(gen.stream("中国", cfg))
    assert "".join(pieces) == gen.generate("中国", cfg)
    ids = gen.generate_ids(tok.encode("中国"), cfg)
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    for p in pieces:
        p.encode("utf-8")  # every piece is a well-formed string


# ---------------------------------------------------------------- chat


def test_chat_uses_template_and_history(gen, tok):
    msgs = [{"role": "user", "content": "你好"}]
    cfg = GREEDY.replace(max_new_tokens=15)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True)
    # the reply is the generated bytes decoded, minus an unfinished character at the very end
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    expected = "".join(dec.decode(tok.token_bytes(i)) for i in gen.generate_ids(ids, cfg) if i > 3).strip()
    assert gen.chat(msgs, cfg) == expected
    session = ChatSession(gen, cfg)
    r1 = session.send("你好")
    assert r1 == expected
    session.send("介绍一下中国")
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    session.clear()
    assert session.history == []


def test_chat_drops_oldest_turns_when_too_long(gen, caplog):
    long = [{"role": "system", "content": "你是助手。"}]
    for i in range(20):
        long += [{"role": "user", "content": "今天天气很好，我们去公园散步。"}, {"role": "assistant", "content": "好的。"}]
    long.append({"role": "user", "content": "你好"})
    with caplog.at_level(logging.WARNING, logger="minigpt.infer.generate"):
        ids = gen.chat_prompt_ids(long, GREEDY)
    assert len(ids) <= gen.cfg.max_seq_len - 1
    assert "dropped" in caplog.text
    assert isinstance(gen.chat(long, GREEDY.replace(max_new_tokens=5)), str)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", 0), ("max_new_tokens", -5), ("top_p", 0.0), ("top_p", 1.5),
    ("temperature", -0.1), ("top_k", -1), ("repetition_penalty", 0.0), ("no_repeat_ngram_size", -1),
])
def test_bad_config_names_field(gen, field, value):
    """A GenerationConfig checks itself once, when made (replace() makes a new one): a bad value never reaches
    generate; a field changed in place is caught by validate()."""
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        GenerationConfig(**{field: value})
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        gen.generate("你好", GREEDY.replace(**{field: value}))
    changed = GenerationConfig()
    setattr(changed, field, value)
    with pytest.raises(ValueError, match=f"^{field}: expected"):
        changed.validate()


def test_empty_prompt_starts_from_eos(gen, tok, model, caplog):
    with caplog.at_level(logging.WARNING, logger="minigpt.infer.generate"):
        out = gen.generate_ids(gen.encode_prompt(""), GREEDY.replace(max_new_tokens=8))
    assert "<|endoftext|>" in caplog.text
    assert out == no_cache_greedy(model, [tok.eos_id], 8)


def test_long_prompt_is_cut_from_left(gen, tok, model, caplog):
    text = "".join(SENTENCES) * 4
    ids = tok.encode(text)
    assert len(ids) > model.config.max_seq_len
    cfg = GREEDY.replace(max_new_tokens=10)
    with caplog.at_level(logging.WARNING, logger="minigpt.infer.generate"):
        out = gen.generate(text, cfg)
    assert "longer than the context" in caplog.text
    keep = model.config.max_seq_len - 10
    expected = tok.decode(no_cache_greedy(model, ids[-keep:], 10), skip_special_tokens=True)
    assert out == expected


def test_tokenizer_hash_mismatch(tmp_path, model, tok):
    ckpt = tmp_path / "ckpt"
    tok.save(tmp_path / "tok")
    save_checkpoint(ckpt, model, {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256}, tokenizer_dir=tmp_path / "tok")
    other = train_tokenizer(corpus(100, seed=5)[::-1], TokenizerConfig(tokenizer_vocab_size=300, min_frequency=2))
    assert other.sha256 != tok.sha256
    with pytest.raises(ValueError, match="tokenizer"):
        TextGenerator.from_checkpoint(ckpt, tokenizer=other)
    g = TextGenerator.from_checkpoint(ckpt, tokenizer=tok)
    assert g.generate("你好", GREEDY.replace(max_new_tokens=5)) == TextGenerator(model, tok).generate(
        "你好", GREEDY.replace(max_new_tokens=5))


def test_prompts_file(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("中国\n\n长江、黄河\n你好，好久不见\n", encoding="utf-8")
    assert read_prompts_file(p) == ["中国", "长江、黄河", "你好，好久不见"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_prompts_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------- CLI chat


def test_chat_cli(tmp_path, model, tok):
    tok.save(tmp_path / "tok")
    ckpt = save_checkpoint(tmp_path / "ckpt", model, {"model": model.config.to_dict(), "tokenizer_sha256": tok.sha256},
                           tokenizer_dir=tmp_path / "tok")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "minigpt.infer.chat", str(ckpt), "--max_new_tokens", "8", "--seed", "0"],
        input="你好\nclear\n介绍一下中国\nq\n", capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("🤖 助手:") == 2
    assert "清空" in proc.stdout and "再见" in proc.stdout


def test_chat_run_loop_in_process(gen):
    from minigpt.infer.chat import run

    inputs = iter(["你好", "clear", "exit", "never read"])
    out = []
    assert run(gen, GREEDY.replace(max_new_tokens=4), read=lambda _p: next(inputs), write=out.append) == 0
    text = "".join(out)
    assert "助手" in text and "再见" in text


def test_stream_does_not_leak_inference_mode(gen, model):
    model.train()
    try:
        it = gen.stream("长江、", GREEDY.replace(max_new_tokens=5))
        first = next(it)
        assert not torch.is_inference_mode_enabled()  # the caller's code between pieces runs normally
        rest = list(it)
        assert model.training  # the model's mode is the caller's: generation never toggles it
        model.eval()
        assert first + "".join(rest) == gen.generate("长江、", GREEDY.replace(max_new_tokens=5))
    finally:
        model.eval()


def test_train_mode_dropout_never_reaches_generation(tok):
    """The decode steps have no dropout, so a model left in train mode generates as in eval mode."""
    from conftest import tiny_gpt

    model = tiny_gpt(tok.vocab_size, dropout=0.5)
    ids = tok.encode("今天天气")
    expected = TextGenerator(model, tok).generate_ids(ids, GREEDY)
    model.train()
    for backend in ("native", "model"):
        assert TextGenerator(model, tok, decode_backend=backend).generate_ids(ids, GREEDY) == expected
    assert model.training


def test_final_text_never_ends_in_half_a_character(gen):
    """max_new_tokens can stop mid-character; the unfinished bytes are dropped, not shown as U+FFFD."""
    ends = [gen.generate("你好", GREEDY.replace(max_new_tokens=n)) for n in range(1, 12)]
    assert ends and not any(t.endswith("\ufffd") for t in ends)


def test_greedy_tokens_match_torch_argmax_with_ties():
    from minigpt.infer.sampling import greedy_tokens

    logits = torch.tensor([[0.5, 2.0, 2.0, -1.0], [3.0, 3.0, 3.0, 3.0], [-5.0, -4.0, -6.0, -4.5]])
    assert greedy_tokens(logits).tolist() == logits.argmax(-1).tolist() == [1, 0, 1]
    assert greedy_tokens(logits).dtype == torch.long
