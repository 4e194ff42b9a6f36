"""evaluate.py: perplexity / bits per character on a token split, samples.md."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from minigpt.infer.evaluate import bits_per_char, evaluate_split, evaluate_texts, split_meta, write_samples
from minigpt.infer.generate import GenerationConfig, TextGenerator
from conftest import mixed_corpus, tiny_gpt, tiny_tokenizer

LINES = ["长江、黄河是中国的两条大河。", "今天天气很好，我们去公园散步。", "你好，很高兴认识你。", "中国的首都是北京。"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


@pytest.fixture(scope="module")
def setup():
    tok = tiny_tokenizer(LINES)
    return tok, tiny_gpt(tok.vocab_size), mixed_corpus(LINES)


def manual_loss(model, data, seq_len):
    losses = []
    for s in range(0, len(data) - seq_len, seq_len):
        x = torch.tensor(data[s:s + seq_len + 1], dtype=torch.long)[None]
        with torch.no_grad():
            _, loss = model(x[:, :-1], x[:, 1:])
        losses.append(loss.item())
    return sum(losses) / len(losses)


def test_evaluate_split_from_tokens_dir(tmp_path, setup):
    tok, model, texts = setup
    ids = []
    for t in texts[:30]:
        ids += tok.encode(t) + [tok.eos_id]
    arr = np.asarray(ids, dtype=np.uint16)
    arr.tofile(tmp_path / "val.bin")
    n_chars = sum(len(t) for t in texts[:30])
    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint16", "val": {"tokens": len(arr), "chars": n_chars}}))
    res = evaluate_split(model, tmp_path, "val", seq_len=16, batch_size=4)
    expected = manual_loss(model, ids, 16)
    assert res["loss"] == pytest.approx(expected, rel=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert res["bpc"] == pytest.approx(expected * len(arr) / (n_chars * math.log(2)), rel=1e-5)
    assert res["tokens"] == 16 * ((len(arr) - 1) // 16)
    # An untrained model is near uniform: loss close to ln(vocab).
    assert abs(res["loss"] - math.log(tok.vocab_size)) < 0.3
    few = evaluate_split(model, tmp_path / "val.bin", seq_len=16, batch_size=2, num_batches=1)
    assert few["tokens"] == 32


def test_meta_layouts():
    # packing.py's layout
    assert split_meta({"splits": {"val": {"file": "val.bin", "num_tokens": 10, "num_chars": 25}}, "dtype": "uint32"},
                      "val") == {"dtype": "uint32", "tokens": 10, "chars": 25}
    assert split_meta({"val_tokens": 7, "val_chars": 9}, "val")["chars"] == 9
    assert bits_per_char(math.log(2), 10, 10) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_chars"):
        bits_per_char(1.0, 10, 0)


def test_evaluate_texts_and_errors(tmp_path, setup):
    tok, model, texts = setup
    res = evaluate_texts(model, tok, texts[:10], seq_len=16)
    assert res["bpc"] > 0 and res["chars_per_token"] > 0
    with pytest.raises(FileNotFoundError, match="val.bin"):
        evaluate_split(model, tmp_path / "missing", "val")
    with pytest.raises(ValueError, match="seq_len"):
        evaluate_split(model, np.arange(100), seq_len=1000)


def test_write_samples(tmp_path, setup):
    tok, model, _ = setup
    gen = TextGenerator(model, tok)
    cfg = GenerationConfig(max_new_tokens=5, seed=0, temperature=0.7, top_k=20)
    path = tmp_path / "runs" / "R" / "samples.md"
    md = write_samples(gen, ["你好，", "长江、"], cfg, path)
    assert path.read_text(encoding="utf-8") == md
    assert "| temperature | 0.7 |" in md and "| top_k | 20 |" in md and "| seed | 0 |" in md
    assert "### 1. 你好，" in md and "### 2. 长江、" in md
    assert md.count("```text") == 2
    chat_md = write_samples(gen, ["你好"], cfg, None, chat=True)
    assert "| mode | chat |" in chat_md
