"""GRPO: group relative policy optimization (Shao et al. 2024, "DeepSeekMath", section 4.1), as plain functions.

For each prompt q a group of G completions o_1..o_G is sampled from the policy and scored by a reward function
(here a program that checks the answer). The advantage of every token of o_i is the group-normalised reward

    A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G)                                  (DeepSeekMath, section 4.1.2)

so no value network is needed: the group is the baseline. The objective, maximised, is

    J = mean_i 1/|o_i| sum_t [ min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps) A_i) - beta KL_it ]     (eq. 3)

with rho_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t) and the KL to the reference policy estimated per token
by the unbiased, always non-negative estimator (Schulman 2020, "Approximating KL divergence", k3; eq. 4):

    KL_it = pi_ref / pi - log(pi_ref / pi) - 1

Only completion tokens carry the loss (the prompt's tokens are masked). A group whose rewards are all equal has
zero advantages everywhere: it carries no signal, and its share is worth logging (`equal_reward_fraction`).

Loss aggregation (`loss_agg`): "sequence" is eq. 3 as written (each completion's tokens averaged, then the
completions); "token" averages over all completion tokens of the batch (DAPO, Yu et al. 2025), which does not
favour short wrong answers over long ones; "constant" sums the tokens' terms and divides by a constant, the number
of completions times the generation budget (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-like training"):
with no per-length weight, the tokens that the completions of a group share (a worked solution's opening "个位...")
get advantages that sum to exactly zero, so RL cannot learn to drop a scratchpad merely because the wrong answers
that use it are longer (with "token", learning rate 2e-4 on the demo's SFT model shortened completions from ~13 to
~8 tokens and arithmetic fell from 0.76 to 0.01).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_AGGREGATIONS = ("sequence", "token", "constant")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i - group mean) / (group std + eps) for rewards laid out group after group (N = groups x G).

    The std is the population std of the group (divides by G). scale=False keeps r_i - mean only (Liu et al. 2025,
    "Understanding R1-Zero-like training", drop the std so that nearly-solved groups are not up-weighted).
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards: expected a flat tensor of groups x {group_size}, got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (r.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred.reshape(-1)


def equal_reward_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """The share of groups whose G rewards are all equal (zero advantage: no learning signal)."""
    r = rewards.view(-1, group_size)
    return float((r.max(dim=1).values == r.min(dim=1).values).float().mean())


def token_logps(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """log pi(target_t | prefix) per position, (B, T), in float32; 0 where the target is ignore_index."""
    mask = targets != ignore_index
    logp = F.log_softmax(logits.float(), dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              ref_logps: torch.Tensor | None = None, clip_eps: float = 0.2, kl_coef: float = 0.0,
              loss_agg: str = "sequence", max_len: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The negated GRPO objective (eq. 3 above) to minimise, and detached statistics.

    logps, old_logps, ref_logps, mask: (B, T) per completion token (mask True on completion tokens);
    advantages: (B,), one per completion; max_len: the constant of loss_agg="constant" (the generation budget;
    default T). old_logps are the sampling policy's (detached); with one update per
    batch of rollouts they equal logps.detach(), the ratio is 1 and the gradient is A_i * grad log pi.
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"loss_agg: expected one of {', '.join(LOSS_AGGREGATIONS)}, got {loss_agg!r}")
    maskf = mask.float()
    ratio = torch.exp(logps - old_logps)
    adv = advantages.float().unsqueeze(1)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv)
    per_token = -surrogate
    stats: dict[str, torch.Tensor] = {}
    if ref_logps is not None:
        log_ratio_ref = ref_logps - logps  # log(pi_ref / pi)
        kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1.0
        if kl_coef:
            per_token = per_token + kl_coef * kl
        stats["kl"] = ((kl * maskf).sum() / maskf.sum().clamp(min=1)).detach()
    if loss_agg == "sequence":
        loss = ((per_token * maskf).sum(dim=1) / maskf.sum(dim=1).clamp(min=1)).mean()
    elif loss_agg == "constant":
        loss = (per_token * maskf).sum() / (mask.shape[0] * (max_len or mask.shape[1]))
    else:
        loss = (per_token * maskf).sum() / maskf.sum().clamp(min=1)
    clipped = ((ratio - 1.0).abs() > clip_eps) & mask
    stats["clip_fraction"] = (clipped.float().sum() / maskf.sum().clamp(min=1)).detach()
    return loss, stats
