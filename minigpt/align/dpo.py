"""DPO as plain functions: the preference loss on sequence log-probs (sigmoid DPO with label smoothing, and IPO)
and what DPO's eval records hold, measured on the same log-ratios.

Inputs are per-pair log-probabilities of the chosen and rejected replies (summed over the reply's tokens)
under the policy being trained (pi) and the frozen reference (ref). With
    h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]
the losses are, per pair:

- ``sigmoid`` (DPO, Rafailov et al. 2023, eq. 7):  -log sigmoid(beta * h)
- with ``label_smoothing`` = eps (conservative DPO, Mitchell 2023, "A note on DPO with noisy preferences"):
  -(1 - eps) log sigmoid(beta * h) - eps log sigmoid(-beta * h), i.e. the labels are flipped with probability eps
- ``ipo`` (IPO, Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
  Preferences", eq. 17, tau = beta):  (h - 1 / (2 * beta))^2

The implicit rewards are beta * (log pi - log ref) of each reply (DPO section 5). The metrics:

- reward accuracy: the share of pairs whose implicit reward of the chosen reply beats the rejected one's; a tie
  counts one half, so the policy before training (= the reference) scores exactly 0.5;
- reward margin: the mean of (chosen reward - rejected reward);
- chosen / rejected log-prob: the policy's mean summed log-prob of each reply, and per token;
- KL to the reference: the mean over the tokens of held-out chosen replies of
  KL(pi(.|x_<t) || ref(.|x_<t)) = sum_v pi(v) (log pi(v) - log ref(v)), teacher-forced on the reference reply.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.datasets import IGNORE_INDEX
from .data import EncodedPair, pad_pairs
from .reference import sequence_logps

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


def pair_metrics(policy: torch.Tensor, ref: torch.Tensor, y: torch.Tensor, beta: float, label_smoothing: float = 0.0,
                 loss_type: str = "sigmoid") -> dict[str, float]:
    """Sums over the pairs of one batch (divide by "pairs" to average): policy/ref (2B,) log-probs, y (2B, T) labels."""
    n = policy.shape[0] // 2
    losses, rc, rr = dpo_losses(policy[:n], policy[n:], ref[:n], ref[n:], beta, label_smoothing, loss_type)
    margin = rc - rr
    tokens = (y != IGNORE_INDEX).sum(-1).clamp(min=1).float()
    return {
        "pairs": float(n), "loss": float(losses.sum()),
        "reward_accuracy": float((margin > 0).float().sum() + 0.5 * (margin == 0).float().sum()),
        "reward_margin": float(margin.sum()), "chosen_reward": float(rc.sum()), "rejected_reward": float(rr.sum()),
        "chosen_logp": float(policy[:n].sum()), "rejected_logp": float(policy[n:].sum()),
        "chosen_logp_per_token": float((policy[:n] / tokens[:n]).sum()),
        "rejected_logp_per_token": float((policy[n:] / tokens[n:]).sum()),
    }


def average(sums: list[dict[str, float]]) -> dict[str, float]:
    """Per-pair means of summed metrics from several batches."""
    total = sum(s["pairs"] for s in sums)
    if not total:
        return {}
    keys = [k for k in sums[0] if k != "pairs"]
    return {k: sum(s[k] for s in sums) / total for k in keys}


@torch.no_grad()
def evaluate_pairs(model: torch.nn.Module, batches: list[tuple], device, beta: float, label_smoothing: float = 0.0,
                   loss_type: str = "sigmoid", autocast=None) -> dict[str, float]:
    """Mean DPO loss and pair metrics of `model` over eval batches ((x, y, {"ref_logps"}) from data.eval_batches)."""
    import contextlib

    was_training = model.training
    model.eval()
    sums = []
    for x, y, extras in batches:
        x, y = x.to(device), y.to(device)
        with (autocast or contextlib.nullcontext)():
            logits = model(x)[0]
        sums.append(pair_metrics(sequence_logps(logits, y), extras["ref_logps"].to(device).float(), y, beta,
                                 label_smoothing, loss_type))
    model.train(was_training)
    return average(sums)


@torch.no_grad()
def kl_to_reference(model: torch.nn.Module, pairs: list[EncodedPair], ref_token_logprobs: list[torch.Tensor], pad_id: int,
                    device) -> float:
    """Mean per-token KL(policy || reference) over the chosen replies of `pairs` (reference.reference_token_logprobs)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for p, ref in zip(pairs, ref_token_logprobs):
        x, y, _ = pad_pairs([p], pad_id)
        logits = model(x[:1].to(device))[0][0]
        mask = (y[0] != IGNORE_INDEX).to(device)
        logp = F.log_softmax(logits.float()[mask], dim=-1)
        total += float((logp.exp() * (logp - ref.to(device))).sum())
        count += int(mask.sum())
    model.train(was_training)
    return total / max(count, 1)
