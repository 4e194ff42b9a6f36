"""sampling.py: each logits processor on hand-made values, the list a config builds, the sampler."""
from __future__ import annotations

import math

import torch

from minigpt.infer.config import GenerationConfig
from minigpt.infer.sampling import (
    History,
    NgramIndex,
    Sampler,
    Scores,
    ban_tokens,
    keep_top_k,
    keep_top_p,
    logits_processors,
    ngram_bans,
    penalize_repeats,
    pick,
    scale_temperature,
)

INF = float("inf")


def test_penalize_repeats():
    s = Scores(torch.tensor([[2.0, -2.0, 1.0, -1.0], [3.0, 0.5, -0.5, 0.0]]))
    seen = torch.tensor([[True, True, False, False], [False, True, True, True]])
    out = penalize_repeats(s, seen, 2.0)
    assert out.logits.tolist() == [[1.0, -4.0, 1.0, -1.0], [3.0, 0.25, -1.0, 0.0]]
    assert out.ids is None
    assert s.logits.tolist()[0] == [2.0, -2.0, 1.0, -1.0]  # pure: the input is unchanged


def test_ban_tokens():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = ban_tokens(Scores(logits), [{0, 2}, set()])
    assert out.logits.tolist() == [[-INF, 2.0, -INF], [4.0, 5.0, 6.0]]
    assert logits.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]  # pure
    assert ban_tokens(Scores(logits), [set(), set()]).logits is logits  # nothing banned: no copy


def test_scale_temperature():
    ids = torch.tensor([[4, 1]])
    out = scale_temperature(Scores(torch.tensor([[3.0, -1.5]]), ids), 0.5)
    assert out.logits.tolist() == [[6.0, -3.0]] and out.ids is ids


def test_keep_top_k():
    out = keep_top_k(Scores(torch.tensor([[1.0, 3.0, 2.0, 0.5, 2.5]])), 2)
    assert out.ids.tolist() == [[1, 4]] and out.logits.tolist() == [[3.0, 2.5]]  # best first
    # A tie at the 2nd value: the whole vocabulary stays, everything under the tie at -inf.
    tie = keep_top_k(Scores(torch.tensor([[3.0, 2.0, 2.0, 1.0]])), 2)
    assert tie.ids is None and tie.logits.tolist() == [[3.0, 2.0, 2.0, -INF]]
    unchanged = Scores(torch.tensor([[1.0, 2.0]]))
    assert keep_top_k(unchanged, 0) is unchanged and keep_top_k(unchanged, 2) is unchanged


def test_keep_top_p_on_the_vocabulary_and_on_candidates():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    full = keep_top_p(Scores(probs.log()), 0.75)
    assert full.ids is None and torch.isinf(full.logits).tolist() == [[True, False, True, False]]
    # The same on top-k candidates (sorted): only their first entries survive, ids untouched.
    ids = torch.tensor([[1, 3, 2]])
    cand = keep_top_p(Scores(torch.tensor([[0.5, 0.3, 0.15]]).log(), ids), 0.75)
    assert cand.ids is ids and torch.isinf(cand.logits).tolist() == [[False, False, True]]
    off = Scores(probs.log())
    assert keep_top_p(off, 1.0) is off


def test_the_list_a_config_builds():
    names = lambda cfg, h=None: [getattr(p, "func", p).__name__ for p in logits_processors(cfg, h)]
    sampled = GenerationConfig(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.2, no_repeat_ngram_size=2)
    history = History([[1, 2, 1]], sampled, vocab_size=8)
    assert names(sampled, history) == ["<lambda>", "<lambda>", "scale_temperature", "keep_top_k", "keep_top_p"]
    assert names(sampled) == ["scale_temperature", "keep_top_k", "keep_top_p"]  # no history: no penalties
    assert names(GenerationConfig(temperature=1.0, top_k=0, top_p=1.0)) == []  # every filter off
    assert names(sampled.replace(do_sample=False)) == []  # greedy: temperature, top-k, top-p never change the argmax


def test_processors_compose_in_order():
    """Penalty, then temperature, then top-k, then top-p, by hand: logits [2, 1, 0, -1], token 0 seen."""
    cfg = GenerationConfig(temperature=0.5, top_k=3, top_p=0.8, repetition_penalty=2.0)
    history = History([[0]], cfg, vocab_size=4)
    s = Scores(torch.tensor([[2.0, 1.0, 0.0, -1.0]]))
    for proc in logits_processors(cfg, history):
        s = proc(s)
    # penalty: [1, 1, 0, -1]; temperature: [2, 2, 0, -2]; top-3: ids [0, 1, 2] (ties resolved by topk);
    # top-p 0.8: p = [e^2, e^2, 1] / sum = [.468, .468, .063]: the first two reach 0.8.
    assert sorted(s.ids[0, :2].tolist()) == [0, 1] and s.ids[0, 2].item() == 2
    assert s.logits[0, :2].tolist() == [2.0, 2.0] and math.isinf(s.logits[0, 2].item())


def test_pick_maps_candidates_back_to_token_ids():
    s = Scores(torch.tensor([[0.1, 5.0], [7.0, -INF]]), torch.tensor([[9, 4], [2, 6]]))
    assert pick(s, greedy=True).tolist() == [4, 2]
    assert pick(s, greedy=False, generator=torch.Generator().manual_seed(0))[1].item() == 2  # -inf never drawn
    assert pick(Scores(torch.tensor([[0.0, 3.0, 1.0]])), greedy=True).tolist() == [1]


def test_history_follows_rows():
    cfg = GenerationConfig(repetition_penalty=1.5, no_repeat_ngram_size=2)
    h = History([[1, 2, 1], [3, 4]], cfg, vocab_size=6)
    assert h.seen.tolist() == [[False, True, True, False, False, False], [False, False, False, True, True, False]]
    assert h.banned() == [{2}, set()]  # row 0: "1 2" seen, the text ends in 1
    h.push([5, 3])
    assert h.seen[1, 3].item() and h.seen[0, 5].item() and h.banned() == [set(), {4}]
    h.keep([1])
    assert h.seen.shape == (1, 6) and h.banned() == [{4}]


def test_ngram_index_equals_ngram_bans():
    seq = [5, 6, 7, 5, 6, 5, 6, 8, 5]
    for n in (1, 2, 3):
        index = NgramIndex(seq[:2], n)
        for i in range(2, len(seq)):
            index.push(seq[i])
            assert index.banned() == set(ngram_bans(seq[:i + 1], n)), (n, i)


def test_sampler_greedy_with_penalty_and_ngram_bans():
    cfg = GenerationConfig(do_sample=False, repetition_penalty=4.0, no_repeat_ngram_size=2)
    sampler = Sampler(cfg, [[0, 1, 0]], vocab_size=4)
    logits = torch.tensor([[1.0, 3.0, 0.9, 0.5]])
    # token 1 would complete the bigram "0 1" again: banned; token 0 is seen: 1.0 / 4 < 0.9.
    assert sampler(logits) == [2]
    seeded = [Sampler(GenerationConfig(seed=7, top_k=0, top_p=1.0, temperature=1.0), [[0]], 4)(
        torch.zeros(3, 4)) for _ in range(2)]
    assert seeded[0] == seeded[1]
