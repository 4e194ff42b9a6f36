"""The DPO losses against hand-computed numbers: sigmoid, conservative (label smoothing), IPO; rewards and metrics."""
import math

import pytest
import torch

from minigpt.align.dpo import average, dpo_losses, pair_metrics

# two pairs: policy/reference summed log-probs of the chosen and rejected replies
PC, PR = torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0])
RC, RR = torch.tensor([-11.0, -18.0]), torch.tensor([-11.0, -16.0])
# h = (pc - rc) - (pr - rr): pair 0: (1) - (-1) = 2; pair 1: (-2) - (1) = -3


def _logsig(z):
    return -math.log1p(math.exp(-z))


def test_sigmoid_dpo_by_hand():
    losses, rc, rr = dpo_losses(PC, PR, RC, RR, beta=0.1)
    assert losses.tolist() == pytest.approx([-_logsig(0.2), -_logsig(-0.3)], abs=1e-6)
    assert losses.tolist() == pytest.approx([0.598139, 0.854355], abs=1e-6)
    assert rc.tolist() == pytest.approx([0.1, -0.2], abs=1e-6) and rr.tolist() == pytest.approx([-0.1, 0.1], abs=1e-6)


def test_label_smoothing_by_hand():
    losses, _, _ = dpo_losses(PC, PR, RC, RR, beta=0.5, label_smoothing=0.2)
    want = [-(0.8 * _logsig(0.5 * h) + 0.2 * _logsig(-0.5 * h)) for h in (2.0, -3.0)]
    assert losses.tolist() == pytest.approx(want, abs=1e-6)
    assert losses.tolist() == pytest.approx([0.513262, 1.401413], abs=1e-6)


def test_ipo_by_hand():
    losses, _, _ = dpo_losses(PC, PR, RC, RR, beta=0.25, loss_type="ipo")
    # (h - 1/(2*0.25))^2 = (h - 2)^2
    assert losses.tolist() == pytest.approx([0.0, 25.0], abs=1e-6)


def test_equal_policy_and_reference_is_log2_and_ties_count_half():
    losses, rc, rr = dpo_losses(RC, RR, RC, RR, beta=0.1)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2, abs=1e-7)
    y = torch.zeros(4, 3, dtype=torch.long)
    m = average([pair_metrics(torch.cat([RC, RR]), torch.cat([RC, RR]), y, beta=0.1)])
    assert m["reward_accuracy"] == 0.5 and m["reward_margin"] == 0.0 and m["loss"] == pytest.approx(math.log(2))


def test_pair_metrics_by_hand():
    y = torch.tensor([[5, 6, -100], [5, -100, -100], [5, 6, 7], [5, 6, 7]])  # 2, 1, 3, 3 reply tokens
    m = average([pair_metrics(torch.cat([PC, PR]), torch.cat([RC, RR]), y, beta=0.1)])
    assert m["reward_accuracy"] == 0.5  # pair 0 right (margin 0.2), pair 1 wrong (margin -0.3)
    assert m["reward_margin"] == pytest.approx((0.2 - 0.3) / 2, abs=1e-6)
    assert m["chosen_logp"] == pytest.approx(-15.0) and m["rejected_logp"] == pytest.approx(-13.5)
    assert m["chosen_logp_per_token"] == pytest.approx((-10 / 2 - 20 / 1) / 2)
    assert m["rejected_logp_per_token"] == pytest.approx((-12 / 3 - 15 / 3) / 2)


def test_gradient_pushes_chosen_up_and_rejected_down():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    dpo_losses(pc, pr, RC, RR, beta=0.1)[0].sum().backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descending the loss raises chosen, lowers rejected


def test_unknown_loss_type_names_the_key():
    with pytest.raises(ValueError, match="loss_type"):
        dpo_losses(PC, PR, RC, RR, loss_type="hinge")
