"""The built-in cloze: deterministic given the seed, written once, and it separates a trained model from an
untrained one (a micro model trained briefly on a corpus whose continuations are learnable)."""
from __future__ import annotations

import json
import random

import pytest
import torch

from minigpt.eval.cloze import chat_cloze, ensure_cloze, load_cloze, text_cloze
from minigpt.eval.runner import untrained_like
from minigpt.eval.scoring import evaluate_items
from conftest import tiny_gpt, train_briefly

pytestmark = pytest.mark.usefixtures("one_thread")

# Ten sentences of 18+ characters; a document is three of them. A prefix of 10 characters cuts inside the first
# sentence, and its true continuation is the rest of that sentence.
SENTENCES = ["长江是中国最长的河流，流经很多省份。", "今天天气很好，我们一起去公园散步吧。", "新华社记者在北京报道了这一条重要消息。",
             "经济发展需要改革开放和科技创新的支持。", "他每天早上六点起床，然后去学校读书。", "这家饭馆的面条很好吃，价格也很便宜。",
             "人工智能正在改变我们工作和生活的方式。", "春天来了，山上的花都开了，非常美丽。", "图书馆里有很多关于历史和文化的书籍。",
             "运动员们在比赛中表现出色，赢得了冠军。"]
CLOZE = dict(prefix_chars=10, min_chars=4, max_chars=24)


def write_docs(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps({"text": "".join(rng.sample(SENTENCES, 3))}, ensure_ascii=False) + "\n")


def write_dialogues(path, n=8):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            conv = [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": SENTENCES[i]}]
            f.write(json.dumps({"conversations": conv}, ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def learnable_run(tmp_path_factory):
    """data/{train,val,sft_val}.jsonl and a tokenizer trained on the sentences."""
    from minigpt.data.tokenizer import TokenizerConfig, train_tokenizer

    run = tmp_path_factory.mktemp("run")
    (run / "data").mkdir()
    write_docs(run / "data" / "train.jsonl", 300, seed=1)
    write_docs(run / "data" / "val.jsonl", 60, seed=2)
    write_dialogues(run / "data" / "sft_val.jsonl")
    texts = [json.loads(l)["text"] for l in (run / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    tok = train_tokenizer(texts, TokenizerConfig(tokenizer_vocab_size=300, min_frequency=2))
    return run, tok, texts


def train_micro_model(tok, texts, steps=150, seed=0, **shape):
    """A micro model trained on `texts` (each document after <|endoftext|>, as the packer writes them)."""
    ids = []
    for t in texts:
        ids += [tok.eos_id] + tok.encode(t)
    data = torch.tensor(ids)
    g = torch.Generator().manual_seed(seed)
    T = 48
    batches = [torch.stack([data[s:s + T + 1] for s in torch.randint(0, len(data) - T - 1, (16,), generator=g)])
               for _ in range(steps)]
    torch.manual_seed(seed)
    model = tiny_gpt(tok.vocab_size, seed=seed, max_seq_len=64, **shape)
    return train_briefly(model, batches, lr=1e-2)


def test_cloze_is_deterministic_given_the_seed(learnable_run):
    run, _, _ = learnable_run
    a = text_cloze(run / "data" / "val.jsonl", 30, seed=0, **CLOZE)
    b = text_cloze(run / "data" / "val.jsonl", 30, seed=0, **CLOZE)
    c = text_cloze(run / "data" / "val.jsonl", 30, seed=1, **CLOZE)
    assert [i.to_json() for i in a] == [i.to_json() for i in b]
    assert [i.to_json() for i in a] != [i.to_json() for i in c]
    for item in a:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert len(item.question) == 10
        true = item.choices[item.answer]
        doc = next(json.loads(l)["text"] for k, l in enumerate((run / "data" / "val.jsonl").read_text(
            encoding="utf-8").splitlines(), 1) if f"val-{k}" == item.id)
        assert doc.startswith(item.question + true) and true.endswith("。")
    assert sorted(i.answer for i in a) != [0] * len(a)  # the right answer moves around


def test_written_once_and_rewritten_when_settings_change(tmp_path, learnable_run):
    run, _, _ = learnable_run
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "val.jsonl").write_bytes((run / "data" / "val.jsonl").read_bytes())
    path = ensure_cloze(tmp_path, n_items=20, seed=0, **CLOZE)
    first = path.read_bytes()
    stamp = path.stat().st_mtime_ns
    assert ensure_cloze(tmp_path, n_items=20, seed=0, **CLOZE) == path and path.stat().st_mtime_ns == stamp
    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "data" / "val.jsonl").write_bytes((run / "data" / "val.jsonl").read_bytes())
    assert ensure_cloze(other, n_items=20, seed=0, **CLOZE).read_bytes() == first  # same input, same file
    assert ensure_cloze(tmp_path, n_items=20, seed=5, **CLOZE).read_bytes() != first
    assert json.loads(path.with_suffix(".meta.json").read_text())["seed"] == 5
    assert len(load_cloze(path)) == 20
    assert ensure_cloze(tmp_path / "no-such-run") is None


def test_chat_variant_from_held_out_dialogues(learnable_run):
    run, _, _ = learnable_run
    items = chat_cloze(run / "data" / "sft_val.jsonl", seed=0)
    assert len(items) == 8
    for item in items:
        assert item.messages[-1]["role"] == "user" and item.question == item.messages[-1]["content"]
        assert item.choices[item.answer] == SENTENCES[int(item.question.removeprefix("问题"))]


def test_too_few_documents_is_a_clear_error(tmp_path):
    path = tmp_path / "val.jsonl"
    write_docs(path, 3, seed=0)
    with pytest.raises(ValueError, match=r"val\.jsonl: 3 documents of at least 14 characters; the cloze needs 4"):
        text_cloze(path, **CLOZE)


def test_trained_model_scores_far_above_chance_untrained_near_it(learnable_run):
    run, tok, texts = learnable_run
    items = text_cloze(run / "data" / "val.jsonl", 60, seed=0, **CLOZE)
    trained = train_micro_model(tok, texts)
    untrained = untrained_like(trained)
    r_trained = evaluate_items(trained, tok, items)
    r_untrained = evaluate_items(untrained, tok, items)
    assert r_trained["n"] == len(items) >= 50
    assert r_trained["accuracy"] >= 0.9, r_trained
    assert r_trained["ci95"][0] > 0.5
    lo, hi = r_untrained["ci95"]
    assert lo <= 0.25 <= hi, r_untrained  # chance lies inside the untrained model's 95% interval
