"""What DPO's eval records hold: reward accuracy and margin, the replies' log-probs, and KL to the reference.

- reward accuracy: the share of pairs whose implicit reward beta*(log pi - log ref) of the chosen reply beats the
  rejected one's; a tie counts one half, so the policy before training (= the reference) scores exactly 0.5;
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
from .loss import dpo_losses
from .reference import sequence_logps


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
