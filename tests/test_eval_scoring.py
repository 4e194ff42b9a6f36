"""The multiple-choice scorer on a hand-made model whose log-likelihoods are known, and the Wilson interval."""
from __future__ import annotations

import math

import pytest
import torch

from minigpt.eval.scoring import (MCItem, encode_pair, evaluate_items, few_shot_context, render_item, score_item,
                                  summarize, wilson_interval)

VOCAB = "^abcxyz\n"  # id 0 ('^') stands for <|endoftext|>
N = len(VOCAB)
P_X_A, P_Y_A, P_Z_Y = 0.7, 0.1, 0.9
P_OTHER_A = (1 - P_X_A - P_Y_A) / (N - 2)  # any other token after 'a'
P_UNIFORM = 1 / N  # rows other than 'a' and 'y'


class CharTokenizer:
    """One token per character of VOCAB."""
    eos_id = 0

    def encode(self, text):
        return [VOCAB.index(c) for c in text]


class BigramModel(torch.nn.Module):
    """logits[t] = log P(next | token t) from a fixed table, so every log-likelihood can be worked out by hand."""

    def __init__(self, probs):
        super().__init__()
        self.table = torch.nn.Parameter(torch.log(torch.tensor(probs, dtype=torch.float64)), requires_grad=False)
        self.config = type("Cfg", (), {"max_seq_len": 32})()

    def forward(self, x, targets=None):
        return self.table[x], None


@pytest.fixture
def model():
    a, x, y, z = (VOCAB.index(c) for c in "axyz")
    rows = [[P_UNIFORM] * N for _ in range(N)]
    rows[a] = [P_OTHER_A] * N
    rows[a][x], rows[a][y] = P_X_A, P_Y_A
    rows[y] = [(1 - P_Z_Y) / (N - 1)] * N
    rows[y][z] = P_Z_Y
    return BigramModel(rows)


def test_log_likelihoods_match_the_hand_computation(model):
    item = MCItem("a", ["x", "yz", "b"], answer=1)
    s = score_item(model, CharTokenizer(), item, style="cloze", prefix_eos=False)
    expected = [math.log(P_X_A), math.log(P_Y_A) + math.log(P_Z_Y), math.log(P_OTHER_A)]
    assert s["lls"] == pytest.approx(expected, abs=1e-6)
    assert s["pred"] == 0 and s["pred_norm"] == 0  # "x": -0.357 in total and per character


def test_length_normalisation_can_change_the_pick(model):
    item = MCItem("a", ["b", "yzzz"], answer=1)
    s = score_item(model, CharTokenizer(), item, style="cloze", prefix_eos=False)
    ll_long = math.log(P_Y_A) + math.log(P_Z_Y) + 2 * math.log(P_UNIFORM)
    assert s["lls"] == pytest.approx([math.log(P_OTHER_A), ll_long], abs=1e-6)
    assert ll_long < math.log(P_OTHER_A) and ll_long / 4 > math.log(P_OTHER_A)
    assert s["pred"] == 0 and s["pred_norm"] == 1  # the total picks "b", per character picks "yzzz"


def test_prefix_eos_conditions_the_first_token(model):
    # with <|endoftext|> first, the context's first token is scored from the '^' row (uniform), not at all otherwise;
    # the continuation's likelihood does not change for a bigram model
    item = MCItem("a", ["x", "y"], answer=0)
    with_eos = score_item(model, CharTokenizer(), item, style="cloze", prefix_eos=True)
    without = score_item(model, CharTokenizer(), item, style="cloze", prefix_eos=False)
    assert with_eos["lls"] == pytest.approx(without["lls"], abs=1e-6)


def test_letters_style_and_few_shot_context():
    item = MCItem("1+1=", ["1", "2"], answer=1)
    ctx, conts = render_item(item, "letters")
    assert ctx == "1+1=\nA. 1\nB. 2\n答案：" and conts == ["A", "B"]
    shot = MCItem("2+2=", ["4", "5"], answer=0)
    assert few_shot_context(item, [shot], "letters") == "2+2=\nA. 4\nB. 5\n答案：A\n\n1+1=\nA. 1\nB. 2\n答案："
    assert few_shot_context(item, [shot], "cloze") == "2+2=4\n\n1+1="


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    class Words:
        def encode(self, text):
            return text.split(" ")  # a stand-in: tokens are space-separated words

    assert encode_pair(Words(), "a b ", "c") == (["a", "b"], ["c"])


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_summary_and_k_shot_use_other_items(model):
    items = [MCItem("a", ["x", "b"], 0), MCItem("a", ["b", "x"], 1), MCItem("a", ["x", "yz", "b"], 1)]
    r = evaluate_items(model, CharTokenizer(), items, prefix_eos=False)
    assert r["preds"] == [0, 1, 0] and r["correct"] == 2 and r["accuracy"] == pytest.approx(2 / 3)
    assert r["random"] == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert r["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    r1 = evaluate_items(model, CharTokenizer(), items, num_fewshot=1, prefix_eos=False)
    assert r1["num_fewshot"] == 1 and r1["n"] == 3
    s = summarize([], [])
    assert s["n"] == 0 and math.isnan(s["accuracy"])


def test_an_item_longer_than_the_context_is_skipped_and_counted(model, caplog):
    """max_seq_len is 32: a 40-token choice cannot be scored; the other items still are."""
    items = [MCItem("a", ["x", "b"], 0), MCItem("a", ["x" * 40, "b"], 1, id="long"), MCItem("a", ["b", "x"], 1)]
    with caplog.at_level("WARNING", logger="minigpt.eval.scoring"):
        r = evaluate_items(model, CharTokenizer(), items, prefix_eos=False)
    assert r["skipped"] == 1 and r["n"] == 2 and r["correct"] == 2 and r["random"] == pytest.approx(0.5)
    assert "1 of 3 items skipped" in caplog.text and "max_seq_len=32" in caplog.text and "long" in caplog.text


def test_mean_of_rates_interval_by_hand_and_contains_the_mean():
    from minigpt.eval.scoring import mean_of_rates_interval

    # families 8/10 and 0/200: mean 0.4; Agresti-Coull p = (8 + 1.92)/(10 + 3.84), (0 + 1.92)/(200 + 3.84)
    z = 1.96
    p1, p2 = (8 + z * z / 2) / (10 + z * z), (0 + z * z / 2) / (200 + z * z)
    half = z * math.sqrt(p1 * (1 - p1) / (10 + z * z) + p2 * (1 - p2) / (200 + z * z)) / 2
    lo, hi = mean_of_rates_interval([(8, 10), (0, 200)])
    assert (lo, hi) == pytest.approx((0.4 - half, 0.4 + half))
    assert lo < 0.4 < hi  # the pooled Wilson interval of 8/210 would not contain 0.4
    assert mean_of_rates_interval([(0, 5)])[0] == 0.0 and mean_of_rates_interval([(5, 5)])[1] == 1.0
