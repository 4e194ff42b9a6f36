"""Preference losses on sequence log-probs: sigmoid DPO (with label smoothing) and IPO.

Inputs are per-pair log-probabilities of the chosen and rejected replies (summed over the reply's tokens)
under the policy being trained (pi) and the frozen reference (ref). With
    h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]
the losses are, per pair:

- ``sigmoid`` (DPO, Rafailov et al. 2023, eq. 7):  -log sigmoid(beta * h)
- with ``label_smoothing`` = eps (conservative DPO, Mitchell 2023, "A note on DPO with noisy preferences"):
  -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h), i.e. the labels are flipped with probability eps
- ``ipo`` (IPO, Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", eq. 17, tau = beta):  (h - 1 / (2 * beta))^2

The implicit rewards are beta * (log pi - log ref) of each reply (DPO section 5).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


def dpo_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, beta: float = 0.1, label_smoothing: float = 0.0,
               loss_type: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards); all inputs (N,) log-probs."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type: expected one of {', '.join(LOSS_TYPES)}, got {loss_type!r}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
