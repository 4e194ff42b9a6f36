"""A run's clock: time-based checkpoints (`save_minutes`) and an early estimate of the whole run's duration.

Step checkpoints every `save_interval` steps can be hours apart on a slow device; a checkpoint at least
every `save_minutes` bounds what any way of stopping (a dead kernel, a killed parent, a reboot) can lose.
After the first few steps the trainer logs how long the run will take on this device, and warns when
that is more than a day, naming a smaller preset or the max_steps that fits in a day.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from ..config import PRESETS

# The train.trainer.Trainer these helpers are handed; not imported, since trainer.py imports this module.
Trainer = Any

logger = logging.getLogger(__name__)

ESTIMATE_AFTER = 3  # steps measured (after the first, which pays for warm-up) before the estimate
DAY_S = 24 * 3600.0


def format_duration(seconds: float) -> str:
    """'45 s', '12.5 min', '3.2 h', '10.4 days'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * DAY_S:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / DAY_S:.1f} days"


def smaller_preset(model_cfg) -> str | None:
    """The preset one size below the model's shape (None for tiny or a custom shape)."""
    names = list(PRESETS)
    for i, name in enumerate(names):
        shape = PRESETS[name]
        if all(getattr(model_cfg, k) == v for k, v in shape.items()):
            return names[i - 1] if i > 0 else None
    return None


class RunTimer:
    """Built at the start of the loop; `step_done(step)` after each optimizer step, `saved()` after each save."""

    def __init__(self, trainer: Trainer, t_start: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.trainer = trainer
        self.clock = clock
        self.save_s = 60.0 * trainer.cfg.checkpoints.save_minutes
        self.first_step = trainer.step  # the step the run (or the resume) started at
        self.t_start = t_start
        self.t_last_save = t_start
        self.t_first_done: float | None = None
        self.estimate_s: float | None = None

    def save_due(self) -> bool:
        return self.save_s > 0 and self.clock() - self.t_last_save >= self.save_s

    def saved(self) -> None:
        self.t_last_save = self.clock()

    def step_done(self, step: int) -> None:
        done = step - self.first_step
        if done == 1:
            self.t_first_done = self.clock()
        elif done == 1 + ESTIMATE_AFTER and self.t_first_done is not None:
            self._estimate(step, (self.clock() - self.t_first_done) / ESTIMATE_AFTER)

    def _estimate(self, step: int, per_step: float) -> None:
        t = self.trainer
        if not getattr(t, "is_main", True):
            return  # under DDP rank 0 says it once
        clock = getattr(t, "train_clock", None)
        if clock is not None and clock.has_budget:
            logger.info("estimate: %.2f s/step; the run stops after %s of training time (max_minutes)",
                        per_step, format_duration(clock.budget_s))
            return
        left = max(0, t.max_steps - step)
        total = self.clock() - self.t_start + per_step * left
        self.estimate_s = total
        where = str(t.device)
        logger.info("estimate: the whole run takes about %s on %s (%.2f s/step, %d steps left)",
                    format_duration(total), where, per_step, left)
        if total <= DAY_S:
            return
        fits = max(1, int((DAY_S - (self.clock() - self.t_start)) / per_step) + step)
        smaller = smaller_preset(t.model_cfg)
        hint = f"a smaller preset (preset={smaller}, or config={smaller}) or " if smaller else ""
        logger.warning("this run would take about %s on %s, more than a day: choose %sfewer steps "
                       "(max_steps=%d takes about a day here); checkpoints are written every %s steps and every %s minutes",
                       format_duration(total), where, hint, fits, t.cfg.checkpoints.save_interval,
                       f"{t.cfg.checkpoints.save_minutes:g}")
