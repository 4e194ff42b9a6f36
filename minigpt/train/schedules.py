"""Learning-rate schedules: linear warmup, then cosine / linear / polynomial / constant / cosine with restarts,
or warmup-stable-decay (wsd: the peak until the last `decay_fraction` of the run, then a linear decay).

A run is measured in steps (`max_steps`) or, with a time budget (`max_minutes`), in training seconds: then the
decay's progress is the share of the budget used, so the decay ends when the budget does. Warmup stays in steps
in both cases: it is short, and a step count keeps its start identical on fast and slow machines.
"""
from __future__ import annotations

import math
from typing import NamedTuple


class TimeProgress(NamedTuple):
    """Where a time-budgeted run is: training seconds so far, the budget, and the training seconds at warmup's end."""

    elapsed_s: float
    budget_s: float
    warmup_end_s: float = 0.0


# A warmup longer than this share of a run leaves it little or no time to decay (a preset's warmup in a short run).
MAX_WARMUP_SHARE = 0.1


def warmup_for_run(warmup_steps: int, max_steps: int) -> int:
    """`warmup_steps` scaled to a run of `max_steps` steps: at most a tenth of it (MAX_WARMUP_SHARE, rounded
    down), so that a short run (`-p max_steps 20` on a preset made for 1,000) still decays to min_lr as its
    schedule says. A run without a step limit (max_steps 0, a time budget) keeps its warmup."""
    if max_steps <= 0:
        return warmup_steps
    return min(warmup_steps, int(max_steps * MAX_WARMUP_SHARE))


def lr_at(step: int, *, learning_rate: float, min_lr: float, warmup_steps: int, max_steps: int,
          lr_scheduler: str = "cosine", lr_restarts: int = 1, decay_lr: bool = True, power: float = 2.0,
          decay_fraction: float = 0.2, time: TimeProgress | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Warmup rises linearly from learning_rate/warmup_steps to learning_rate over `warmup_steps` steps, then the
    schedule decays to `min_lr` at `max_steps`. `decay_lr=False` keeps the peak after warmup.
    With `time` (a max_minutes budget) the decay runs against training time instead: it reaches `min_lr` when
    `time.elapsed_s` reaches `time.budget_s`; if `max_steps` > 0 as well, whichever is further along leads.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return learning_rate * (step + 1) / warmup_steps
    if not decay_lr or lr_scheduler == "constant":
        return learning_rate
    if time is not None:
        run, progress = _time_fractions(step, time, warmup_steps, max_steps)
        if lr_scheduler == "wsd":
            factor = min(1.0, max(0.0, (1.0 - run) / decay_fraction))
            return min_lr + (learning_rate - min_lr) * factor
        return min_lr + (learning_rate - min_lr) * _decay_factor(lr_scheduler, progress, lr_restarts, power)
    if lr_scheduler == "wsd":
        return _wsd(step, learning_rate, min_lr, max_steps, decay_fraction)
    span = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (learning_rate - min_lr) * _decay_factor(lr_scheduler, progress, lr_restarts, power)


def _time_fractions(step: int, time: TimeProgress, warmup_steps: int, max_steps: int) -> tuple[float, float]:
    """(share of the whole run done, share of the decay after warmup done), by time and, if set, by steps."""
    run = time.elapsed_s / time.budget_s
    progress = (time.elapsed_s - time.warmup_end_s) / max(time.budget_s - time.warmup_end_s, 1e-9)
    if max_steps > 0:
        run = max(run, step / max_steps)
        progress = max(progress, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min(1.0, max(0.0, run)), min(1.0, max(0.0, progress))


def _decay_factor(lr_scheduler: str, progress: float, lr_restarts: int, power: float) -> float:
    """The share of (peak - min_lr) left at `progress` in [0, 1] of the decay."""
    if lr_scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if lr_scheduler == "linear":
        return 1.0 - progress
    if lr_scheduler == "polynomial":
        return (1.0 - progress) ** power
    if lr_scheduler == "cosine_with_restarts":
        # `lr_restarts` cosine cycles of equal length, each starting again from the peak.
        cycle = progress * lr_restarts
        frac = cycle - math.floor(cycle) if progress < 1.0 else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"lr_scheduler: unknown schedule {lr_scheduler!r}")


def _wsd(step: int, learning_rate: float, min_lr: float, max_steps: int, decay_fraction: float) -> float:
    """Warmup-stable-decay after warmup (Hu et al. 2024, MiniCPM): the peak, then a linear decay to min_lr over
    the last round(decay_fraction * max_steps) steps, reaching min_lr at step max_steps."""
    decay_steps = max(1, round(decay_fraction * max_steps))
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return learning_rate
    factor = max(0.0, 1.0 - (step - decay_start) / decay_steps)
    return min_lr + (learning_rate - min_lr) * factor
