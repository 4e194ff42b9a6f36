"""Learning-rate schedules: linear warmup, then cosine / linear / polynomial / constant / cosine with restarts,
or warmup-stable-decay (wsd: the peak until the last `decay_fraction` of the steps, then a linear decay)."""
from __future__ import annotations

import math


def lr_at(step: int, *, learning_rate: float, min_lr: float, warmup_steps: int, max_steps: int,
          lr_scheduler: str = "cosine", lr_restarts: int = 1, decay_lr: bool = True, power: float = 2.0,
          decay_fraction: float = 0.2) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup rises linearly from learning_rate/warmup_steps to learning_rate over `warmup_steps` steps, then the
    schedule decays to `min_lr` at `max_steps`. `decay_lr=False` keeps the peak after warmup.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    if not decay_lr or lr_scheduler == "constant":
        return learning_rate
    if lr_scheduler == "wsd":
        return _wsd(step, learning_rate, min_lr, max_steps, decay_fraction)
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if lr_scheduler == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif lr_scheduler == "linear":
        factor = 1.0 - progress
    elif lr_scheduler == "polynomial":
        factor = (1.0 - progress) ** power
    elif lr_scheduler == "cosine_with_restarts":
        # `lr_restarts` cosine cycles of equal length, each starting again from the peak.
        cycle = progress * lr_restarts
        frac = cycle - math.floor(cycle) if progress < 1.0 else 1.0
        factor = 0.5 * (1.0 + math.cos(math.pi * frac))
    else:
        raise ValueError(f"lr_scheduler: unknown schedule {lr_scheduler!r}")
    return min_lr + (learning_rate - min_lr) * factor


def _wsd(step: int, learning_rate: float, min_lr: float, max_steps: int, decay_fraction: float) -> float:
    """Warmup-stable-decay after warmup (Hu et al. 2024, MiniCPM): the peak, then a linear decay to min_lr over
    the last round(decay_fraction * max_steps) steps, reaching min_lr at step max_steps."""
    decay_steps = max(1, round(decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return learning_rate
    factor = max(0.0, 1.0 - (step - decay_start) / decay_steps)
    return min_lr + (learning_rate - min_lr) * factor
