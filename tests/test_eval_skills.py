"""Skills evaluation: counts equal a hand loop of the checker over the generated text, the Wilson interval and the
pass@k estimator against hand-computed values, the table, the plot, and skills.json reused for unchanged stages."""
from __future__ import annotations

import json
import math

import pytest

from minigpt.data.skills import SkillItem, check_answer, extract_answer, make_skills
from minigpt.eval.scoring import change_note, mean_of_rates_interval, pass_at_k, wilson_interval
from minigpt.eval.skills import evaluate_run_skills, evaluate_skills, format_skills_table, read_skills
from minigpt.infer.generate import GenerationConfig, TextGenerator
from conftest import make_tiny_run, tiny_gpt

pytestmark = pytest.mark.usefixtures("one_thread")


def test_wilson_interval_against_hand_values():
    # k=8, n=10, z=1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71679, half 0.22658 -> (0.490, 0.943)
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    # k=1, n=2: centre 0.5, half 1.96 * sqrt(0.125 + 0.9604 / 16) / 2.9208 = 0.40459 -> (0.095, 0.905)
    assert tuple(round(v, 3) for v in wilson_interval(1, 2)) == (0.095, 0.905)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(3, 2)


def test_pass_at_k_hand_cases():
    # n=5 samples, c=2 right, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # k=1 is the fraction right
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    # n == k: 1 if any sample is right
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 1, 4) == 1.0
    # 1 - C(7,3)/C(10,3) = 1 - 35/120
    assert pass_at_k(10, 3, 3) == pytest.approx(1 - 35 / 120)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_change_note_warns_when_the_held_out_set_cannot_tell():
    note = change_note(1, 1, 2, "held-out reward accuracy")
    assert note.startswith("held-out reward accuracy 0.500 [0.095, 0.905] before -> 0.500 [0.095, 0.905] after (n=2)")
    assert "cannot tell this change from noise" in note
    assert "cannot tell" not in change_note(20, 90, 100)  # 0.20 [0.13, 0.29] vs 0.90 [0.83, 0.94]


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory):
    """A micro model trained briefly on the run's text: its replies are text (an untrained one stops at once)."""
    from test_eval_cloze import train_micro_model

    from minigpt.data.tokenizer import MiniTokenizer

    run = make_tiny_run(tmp_path_factory.mktemp("skills") / "run")
    tok = MiniTokenizer.load(run / "tokenizer")
    texts = [json.loads(l)["text"] for l in (run / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    return run, tok, train_micro_model(tok, texts, steps=60, seed=3)


def _hand_replies(model, tok, items, max_new_tokens):
    """One prompt at a time through TextGenerator.chat (greedy): what the batched evaluation must reproduce."""
    gen = TextGenerator(model, tok)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, repetition_penalty=1.0)
    return [gen.chat(it.messages(), cfg) for it in items]


def test_counts_equal_a_hand_loop_of_the_checker(tok_model):
    _, tok, model = tok_model
    base = make_skills("test", 4, seed=0, families=["copy", "add"])
    replies = _hand_replies(model, tok, base, 8)
    # every other copy problem takes the model's own reply as its reference, so some are right and some are not
    items = [SkillItem(it.family, it.lang, it.question,
                       extract_answer(rep) if it.family == "copy" and i % 2 == 0 and extract_answer(rep) else it.answer,
                       it.split) for i, (it, rep) in enumerate(zip(base, replies))]
    r = evaluate_skills(model, tok, items, max_new_tokens=8, batch_size=3)  # 3 batched calls, the last one short
    assert [c["completion"] for c in r["completions"]] == replies  # batched == one at a time
    for fam in ("copy", "add"):
        hand = sum(check_answer(it.family, rep, it.answer) for it, rep in zip(items, replies) if it.family == fam)
        got = r["families"][fam]
        assert got["correct"] == hand and got["n"] == 4
        assert got["pass@1"] == hand / 4 and got["ci95"] == list(wilson_interval(hand, 4))
    assert 1 <= r["families"]["copy"]["correct"] < 4  # some right (its own replies), some not
    total = sum(f["correct"] for f in r["families"].values())
    assert r["mean"]["pass@1"] == pytest.approx((r["families"]["copy"]["pass@1"] + r["families"]["add"]["pass@1"]) / 2)
    fams = r["families"]
    assert r["mean"]["ci95"] == list(mean_of_rates_interval([(fams[f]["correct"], 4) for f in ("copy", "add")]))
    assert r["mean"]["ci95"][0] <= r["mean"]["pass@1"] <= r["mean"]["ci95"][1] and r["mean"]["correct"] == total


def test_sampled_pass_at_k_is_reproducible_and_bounded(tok_model):
    _, tok, model = tok_model
    items = make_skills("test", 3, seed=0, families=["copy", "compare"])
    a = evaluate_skills(model, tok, items, samples=3, max_new_tokens=6, seed=5, sample_per_family=2)
    b = evaluate_skills(model, tok, items, samples=3, max_new_tokens=6, seed=5, sample_per_family=2)
    assert a["families"] == b["families"]
    for fam in a["families"].values():
        assert fam["k"] == 3 and fam["sampled_n"] == 2 and fam["n"] == 3
        assert 0.0 <= fam["sampled_pass@1"] <= fam["pass@k"] <= 1.0
    assert "pass@3" in format_skills_table({"sft": a})


def test_table_rows_are_families_and_columns_stages():
    fam = {"n": 10, "correct": 8, "pass@1": 0.8, "ci95": list(wilson_interval(8, 10))}
    low = {"n": 10, "correct": 0, "pass@1": 0.0, "ci95": list(wilson_interval(0, 10))}
    res = lambda f: {"families": {"add": f}, "mean": dict(f), "settings": {"temperature": 1.0}}  # noqa: E731
    md = format_skills_table({"sft": res(fam), "untrained": res(low)})
    lines = md.splitlines()
    assert lines[0] == "| family | n | untrained | sft |"  # the chain's order, not the dict's
    assert lines[2] == "| add | 10 | 0.00 [0.00, 0.28] | 0.80 [0.49, 0.94] |"
    assert lines[3].startswith("| **mean** | 10 |")


def test_skills_json_reuses_unchanged_stages(tok_model, tmp_path):
    from minigpt.ui.plots import save_skills_plot

    _, tok, model = tok_model
    items = make_skills("test", 2, seed=0, families=["copy", "compare"])
    settings = {"samples": 2, "max_new_tokens": 6, "seed": 0}
    lines = []
    out = evaluate_run_skills(tmp_path, {"pretrain": (model, tok, "aaa"), "sft": (model, tok, "bbb")}, items, settings,
                              progress=lines.append)
    assert "pass@k" not in out["pretrain"]["mean"] and out["sft"]["mean"]["k"] == 2  # samples from SFT on only
    assert len(lines) == 2 and all("mean pass@1" in line for line in lines)
    lines.clear()
    evaluate_run_skills(tmp_path, {"pretrain": (model, tok, "aaa"), "sft": (model, tok, "ccc")}, items, settings,
                        progress=lines.append)
    assert "unchanged checkpoint" in lines[0] and "mean pass@1" in lines[1]  # only the changed stage again
    stored = read_skills(tmp_path)["stages"]
    assert stored["sft"]["sha256"] == "ccc" and set(stored) == {"pretrain", "sft"}
    png = save_skills_plot(out, tmp_path / "skills.png")
    assert png.stat().st_size > 1000 and not list(tmp_path.glob(".*.tmp.png"))
    (tmp_path / "eval" / "skills.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="skills.json: not valid JSON"):
        read_skills(tmp_path)
