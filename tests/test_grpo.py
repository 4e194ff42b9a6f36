"""GRPO (minigpt.align.grpo): advantages, the clipped surrogate, the k3 KL and the masks, against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from minigpt.align.grpo import equal_reward_fraction, group_advantages, grpo_loss, token_logps


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])  # two groups of 4
    adv = group_advantages(r, 4, eps=0.0)
    # group 1: mean 0.25, population std sqrt(0.1875) = 0.4330; group 2 all equal: 0 / (0 + eps)
    s = math.sqrt(0.1875)
    assert adv[:4].tolist() == pytest.approx([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s])
    assert group_advantages(r, 4)[4:].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert group_advantages(r, 4, scale=False).tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])
    assert equal_reward_fraction(r, 4) == 0.5
    with pytest.raises(ValueError, match="groups x 3"):
        group_advantages(r, 3)


def test_grpo_loss_by_hand_with_clipping_and_kl():
    # two completions, three positions; row 0 has 2 completion tokens, row 1 has 3
    logps = torch.tensor([[-1.0, -0.5, 0.0], [-2.0, -1.0, -0.2]])
    old = torch.tensor([[-1.5, -0.5, 0.0], [-1.0, -1.1, -0.2]])
    ref = torch.tensor([[-1.2, -0.7, 0.0], [-2.0, -0.9, -0.4]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([1.0, -2.0])
    eps, beta = 0.2, 0.1

    def by_hand(agg: str) -> float:
        per_row = []
        tokens = []
        for b in range(2):
            row = []
            for t in range(3):
                if not mask[b, t]:
                    continue
                ratio = math.exp(float(logps[b, t] - old[b, t]))
                a = float(adv[b])
                surr = min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
                d = float(ref[b, t] - logps[b, t])
                kl = math.exp(d) - d - 1
                row.append(-surr + beta * kl)
            per_row.append(sum(row) / len(row))
            tokens += row
        if agg == "constant":  # Dr. GRPO: the token sum over completions x the budget (max_len 4 here)
            return sum(tokens) / (2 * 4)
        return sum(per_row) / 2 if agg == "sequence" else sum(tokens) / len(tokens)

    for agg in ("sequence", "token", "constant"):
        loss, stats = grpo_loss(logps, old, adv, mask, ref, clip_eps=eps, kl_coef=beta, loss_agg=agg, max_len=4)
        assert float(loss) == pytest.approx(by_hand(agg), rel=1e-6)
    # ratios: e^0.5 (clipped), 1, e^-1 (clipped), e^0.1, 1 -> 2 of 5 completion tokens outside [0.8, 1.2]
    assert float(stats["clip_fraction"]) == pytest.approx(2 / 5)
    assert float(stats["kl"]) > 0


def test_grpo_gradient_is_advantage_times_score_at_ratio_one():
    """One update per rollout batch: old = logps.detach(), so d loss / d logp_t = -A / |o| (sequence mean)."""
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([0.5, -1.0])
    loss, _ = grpo_loss(logps, logps.detach(), adv, mask, loss_agg="sequence")
    loss.backward()
    assert logps.grad.flatten().tolist() == pytest.approx([-0.5 / 2 / 2, -0.5 / 2 / 2, 1.0 / 1 / 2, 0.0])


def test_token_logps_masks_ignored_targets():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    y = torch.tensor([[0, -100]])
    out = token_logps(logits, y)
    assert out[0, 0].item() == pytest.approx(2.0 - math.log(math.exp(2) + 2))
    assert out[0, 1].item() == 0.0


def test_constant_aggregation_leaves_no_gradient_on_a_prefix_the_group_shares():
    """A group of two: a short right answer and a long wrong one, both opening with the same token. With
    loss_agg="constant" (Dr. GRPO) the shared opening's gradient is A_1 + A_2 = 0 over the budget; with "token"
    the long wrong answer's tokens weigh less each... and with "sequence" the short right answer's weigh more, so
    the opening token is pushed one way or the other by length alone."""
    from minigpt.align.grpo import group_advantages

    adv = group_advantages(torch.tensor([1.0, 0.0]), 2)  # [+1, -1]
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    grads = {}
    for agg in ("constant", "token", "sequence"):
        logps = torch.full((2, 4), -1.0, requires_grad=True)
        loss, _ = grpo_loss(logps, logps.detach(), adv, mask, loss_agg=agg, max_len=8)
        loss.backward()
        grads[agg] = logps.grad
    shared = {agg: float(g[0, 0] + g[1, 0]) for agg, g in grads.items()}  # the opening token's total push
    assert shared["constant"] == pytest.approx(0.0, abs=1e-6)
    assert float(grads["constant"][0, 0]) == pytest.approx(-float(adv[0]) / (2 * 8), rel=1e-4)
    assert abs(shared["sequence"]) > 0.05  # 1/2 against 1/4 per token: the opening is pushed up
