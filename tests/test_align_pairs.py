"""Preference pairs: both formats read, each malformed line rejected with its line, reason and detail; encoding keeps
the final reply's labels only; SPIN pairs and the held-out split."""
import json

import pytest
import torch

from minigpt.align import pairs as P
from minigpt.align.data import PairBatches, encode_pairs, pad_pairs
from minigpt.data.datasets import IGNORE_INDEX

U, A = "user", "assistant"


def m(role, content):
    return {"role": role, "content": content}


GOOD_MINIMIND = {"chosen": [m(U, "你好"), m(A, "你好，很高兴认识你。")], "rejected": [m(U, "你好"), m(A, "走开。")]}
GOOD_FLAT = {"prompt": "中国的首都是哪里？", "chosen": "北京。", "rejected": "上海。"}

# (line content, expected reason, a piece of the expected detail)
BAD = [
    ('{"chosen": [', P.INVALID_JSON, "column"),
    ('[1, 2]', P.NOT_AN_OBJECT, "list"),
    ('{"prompt": "x", "chosen": "a"}', P.UNKNOWN_FORMAT, "missing key rejected"),
    (json.dumps({"chosen": "a", "rejected": [m(U, "x"), m(A, "b")]}), P.BAD_MESSAGES, "chosen: expected a non-empty list"),
    (json.dumps({"chosen": [m(U, "x"), {"role": A}], "rejected": [m(U, "x"), m(A, "b")]}), P.BAD_MESSAGES, "chosen[1]"),
    (json.dumps({"chosen": [m(U, "x"), m("bot", "a")], "rejected": [m(U, "x"), m(A, "b")]}), P.BAD_ROLE, "chosen[1].role: 'bot'"),
    (json.dumps({"chosen": [m(U, "x"), m(A, "a")], "rejected": [m(A, "b"), m(U, "x")]}), P.NO_FINAL_REPLY, "rejected: the last message is a 'user'"),
    (json.dumps({"chosen": [m(U, "x"), m(A, "a")], "rejected": [m(U, "y"), m(A, "b")]}), P.PROMPT_MISMATCH, "differ at message 0"),
    (json.dumps({"chosen": [m(U, "x"), m(A, "同一个")], "rejected": [m(U, "x"), m(A, "同一个")]}), P.IDENTICAL_REPLIES, "same text"),
    (json.dumps({"prompt": "x", "chosen": "  ", "rejected": "b"}), P.EMPTY_REPLY, "chosen reply is empty"),
    (json.dumps({"chosen": [m("system", "s"), m(A, "a")], "rejected": [m("system", "s"), m(A, "b")]}), P.NO_USER_TURN, "user turn"),
    (json.dumps({"prompt": "x", "chosen": ["a"], "rejected": "b"}), P.BAD_MESSAGES, "chosen: expected a string"),
]


def test_both_formats_and_every_bad_line_accounted_for(tmp_path):
    path = tmp_path / "dpo.jsonl"
    lines = [json.dumps(GOOD_MINIMIND, ensure_ascii=False), json.dumps(GOOD_FLAT, ensure_ascii=False)] + [b[0] for b in BAD]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    report = P.PairReport(str(path))
    pairs = P.read_pairs(path, report)
    assert [p.chosen for p in pairs] == ["你好，很高兴认识你。", "北京。"]
    assert pairs[1].prompt_messages() == [m(U, "中国的首都是哪里？")] and pairs[1].rejected == "上海。"
    assert report.lines == len(lines) and report.kept == 2 and len(report.rejects) == len(BAD)
    for rej, (raw, reason, detail), line in zip(report.rejects, BAD, range(3, 3 + len(BAD))):
        assert (rej["line"], rej["reason"]) == (line, reason), rej
        assert detail in rej["detail"], (reason, rej["detail"])
        assert rej["file"] == str(path) and rej["excerpt"] == raw[:200]
    P.write_rejects(tmp_path / "rejects.jsonl", report)
    written = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["reason"] for r in written] == [b[1] for b in BAD]
    assert set(written[0]) == {"file", "line", "reason", "excerpt", "source", "detail"}


def test_multi_turn_pair_shares_everything_before_the_final_reply():
    conv = [m("system", "你是助手。"), m(U, "你好"), m(A, "你好！"), m(U, "你叫什么？")]
    pair = P.parse_pair({"chosen": conv + [m(A, "我叫小明。")], "rejected": conv + [m(A, "不知道。")]})
    assert pair.prompt_messages() == conv and pair.messages("rejected")[-1] == m(A, "不知道。")
    with pytest.raises(P.PairError) as e:
        P.parse_pair({"chosen": conv + [m(A, "我叫小明。")], "rejected": conv[:2] + [m(A, "不知道。")]})
    assert e.value.reason == P.PROMPT_MISMATCH and "differ at message 2" in e.value.detail


def test_texts_are_normalised():
    pair = P.parse_pair({"prompt": "你好,世界", "chosen": "ＡＢＣ", "rejected": "abd"})
    assert pair.prompt_messages()[0]["content"] == "你好，世界" and pair.chosen == "ABC"


def test_missing_file_names_the_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="chosen"):
        P.read_pairs(tmp_path / "nope.jsonl")


@pytest.fixture(scope="module")
def tok():
    from conftest import tiny_tokenizer

    return tiny_tokenizer()


def test_encoded_pair_labels_only_the_final_reply(tok):
    conv = [m(U, "你好"), m(A, "你好，很高兴认识你。"), m(U, "中国的首都是哪里？")]
    pair = P.parse_pair({"chosen": conv + [m(A, "中国的首都是北京。")], "rejected": conv + [m(A, "今天天气很好。")]})
    (enc,), kept, dropped = encode_pairs(tok, [pair], max_len=200)
    assert kept == [pair] and dropped == 0
    prompt_ids = tok.apply_chat_template(conv, add_generation_prompt=True)
    for ex, reply in ((enc.chosen, "中国的首都是北京。"), (enc.rejected, "今天天气很好。")):
        full = tok.apply_chat_template(conv + [m(A, reply)])
        assert ex.input_ids == full[:-1] and full[:len(prompt_ids)] == prompt_ids  # the prompt is shared
        labelled = [t for t in ex.labels if t != IGNORE_INDEX]
        assert labelled == tok.encode(reply) + [tok.im_end_id]  # the final reply and its <|im_end|>, nothing else
    assert enc.chosen.input_ids[:len(prompt_ids)] == enc.rejected.input_ids[:len(prompt_ids)]
    # a side longer than the context is dropped, not cut (a cut would remove the reply itself)
    assert encode_pairs(tok, [pair], max_len=len(prompt_ids) + 2)[2] == 1


def test_pair_batches_are_a_function_of_seed_and_index(tok):
    pairs = [P.parse_pair({"prompt": f"问题{i}", "chosen": "北京。" * (1 + i % 3), "rejected": "上海。"}) for i in range(10)]
    enc, _, _ = encode_pairs(tok, pairs, 100)
    ref = -torch.arange(20, dtype=torch.float32).reshape(10, 2)
    b = PairBatches(enc, ref, batch_size=3, pad_id=tok.pad_id, seed=5)
    x, y, extras = b.batch_at(4)
    assert x.shape[0] == 6 and extras["ref_logps"].shape == (6,)
    # rows i and i+3 are the chosen and rejected sides of one pair, with that pair's cached numbers
    for i in range(3):
        j = next(k for k, e in enumerate(enc) if e.chosen.input_ids == x[i, :len(e.chosen.input_ids)].tolist()
                 and e.rejected.input_ids == x[i + 3, :len(e.rejected.input_ids)].tolist())
        assert extras["ref_logps"][i] == ref[j, 0] and extras["ref_logps"][i + 3] == ref[j, 1]
    again = PairBatches(enc, ref, batch_size=3, pad_id=tok.pad_id, seed=0)
    again.load_state_dict({**b.state_dict(), "position": 4})
    assert all(torch.equal(a, c) for a, c in zip(next(again)[:2], (x, y)))
    shard = PairBatches(enc, ref, batch_size=3, pad_id=tok.pad_id, seed=5, rank=1, world_size=2)
    assert not torch.equal(shard.batch_at(0)[0][:1], b.batch_at(0)[0][:1]) or len(enc) < 6
    x2, _, _ = pad_pairs(enc[:2], tok.pad_id)
    assert x2.shape[0] == 4


def test_spin_pairs_and_heldout_split(tok):
    from conftest import tiny_gpt
    from minigpt.align.spin import heldout_split, spin_pairs
    from minigpt.infer.generate import GenerationConfig

    convs = [[m(U, f"你好{i}"), m(A, "很高兴认识你。")] for i in range(6)] + [[m(U, "只有问题")]]
    train, held = heldout_split(convs[:5], convs[5:6], eval_pairs=3)
    assert len(held) == 3 and held[0] == convs[5] and len(train) == 3 and not [c for c in train if c in held]
    model = tiny_gpt(tok.vocab_size, max_seq_len=64)
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, top_k=0, top_p=1.0, seed=7)
    pairs, counts = spin_pairs(model, tok, convs, cfg, batch_size=4)
    again, _ = spin_pairs(model, tok, convs, cfg, batch_size=4)
    assert counts["dialogues"] == 7 and counts["no_reply"] == 1
    assert counts["pairs"] + counts["empty_sample"] + counts["sample_equals_reference"] == 6
    assert [p.rejected for p in pairs] == [p.rejected for p in again]  # seeded sampling
    assert all(p.chosen == "很高兴认识你。" and p.rejected != p.chosen for p in pairs)


@pytest.mark.parametrize("worked", [False, True])
def test_skill_pairs_choose_the_reference_reply_and_reject_the_models_wrong_sample(worked):
    """pairs_source: skills. An untrained model answers every problem wrong, so each problem gives one pair whose
    chosen side is the reference (a worked solution when the run trains on them) and rejected side a sampled reply."""
    from conftest import tiny_gpt, tiny_tokenizer
    from minigpt.align.spin import skill_pairs
    from minigpt.data import skills as S
    from minigpt.infer.generate import GenerationConfig

    tok = tiny_tokenizer()
    items = S.make_skills("val", 3, families=["add", "copy"])
    pairs, counts = skill_pairs(tiny_gpt(tok.vocab_size, max_seq_len=64), tok, items,
                                GenerationConfig(max_new_tokens=6, do_sample=True, seed=0), samples=2, worked=worked)
    assert counts["problems"] == 6 and counts["pairs"] == len(pairs) == 6 - counts["empty_sample"]
    for pair in pairs:
        it = next(i for i in items if i.question == pair.prompt[0][1])
        assert pair.chosen == S.reference_reply(it, worked)
        assert pair.chosen.startswith("个位") == (worked and it.family == "add")
        assert not S.check_answer(it.family, pair.rejected, it.answer)
