"""A run's one clock: training time and its budget (`max_minutes`), checkpoints by time (`save_minutes`), and the
early estimate of how long the whole run takes.

Training time is wall time minus what the loop spends evaluating, saving checkpoints, sampling and pausing for the
resource guard (`paused()`). With a budget the run stops when training time reaches `max_minutes`, and the
learning-rate schedule runs against that time (schedules.TimeProgress): warmup ends after `warmup_steps`, the decay
ends with the budget. Training time is saved in every checkpoint's trainer_state.json; a resumed run continues it.
A time-budgeted run is not bitwise reproducible (where it stops depends on this machine's speed); step-based runs
do not read the training time and stay exact.

Step checkpoints every `save_interval` steps can be hours apart on a slow device; a checkpoint at least every
`save_minutes` (wall time) bounds what any way of stopping can lose. After the first few steps the clock gives the
time per step, and `log_estimate` says how long the run will take here, warning when that is more than a day.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Iterator

from ..config import PRESETS, ModelConfig
from .schedules import TimeProgress

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


def smaller_preset(model_cfg: ModelConfig) -> str | None:
    """The preset one size below the model's shape (None for tiny or a custom shape)."""
    names = list(PRESETS)
    for i, name in enumerate(names):
        if all(getattr(model_cfg, k) == v for k, v in PRESETS[name].items()):
            return names[i - 1] if i > 0 else None
    return None


class TrainClock:
    """`start(step)` when the loop begins; `step_done(step)` after each optimizer step, `saved()` after each save.
    `clock` is injectable (tests drive it by hand)."""

    def __init__(self, max_minutes: float = 0.0, save_minutes: float = 0.0,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget_s = 60.0 * max_minutes
        self.save_s = 60.0 * save_minutes
        self.clock = clock
        self.warmup_end_s: float | None = None
        self.estimate_s: float | None = None  # the whole run's wall time, once estimated
        self._base = 0.0  # training seconds before this process's start (a resumed run's)
        self._excluded = 0.0
        self._t0: float | None = None
        self._first_step = 0  # the step this process started at
        self._t_last_save = 0.0
        self._t_first_done: float | None = None

    # ----- training time and the budget -------------------------------------------------------
    def start(self, step: int = 0) -> None:
        """The loop begins at `step`: count from now, on top of what a resumed checkpoint recorded."""
        self._t0, self._excluded = self.clock(), 0.0
        self._first_step, self._t_last_save, self._t_first_done = step, self._t0, None

    def elapsed_s(self) -> float:
        """Training seconds (a resumed run's included)."""
        if self._t0 is None:
            return self._base
        return self._base + (self.clock() - self._t0) - self._excluded

    def wall_s(self) -> float:
        """Wall seconds since start(), evaluation and saving included."""
        return 0.0 if self._t0 is None else self.clock() - self._t0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time spent inside does not count as training (evaluation, checkpoints, samples, guard pauses)."""
        t = self.clock()
        try:
            yield
        finally:
            self._excluded += self.clock() - t

    @property
    def has_budget(self) -> bool:
        return self.budget_s > 0

    def over_budget(self) -> bool:
        return self.has_budget and self.elapsed_s() >= self.budget_s

    def progress(self, step: int, warmup_steps: int) -> TimeProgress | None:
        """The schedule's position by time (None without a budget); notes when warmup ended."""
        if not self.has_budget:
            return None
        now = self.elapsed_s()
        if self.warmup_end_s is None and step >= warmup_steps:
            self.warmup_end_s = now
        return TimeProgress(now, self.budget_s, self.warmup_end_s or 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"train_time_s": self.elapsed_s(), "warmup_end_s": self.warmup_end_s}

    def load_state_dict(self, state: dict[str, Any] | None, where: str = "trainer_state.json") -> None:
        """Continue from a checkpoint's clock (a checkpoint without one: from zero)."""
        state = state or {}
        for key in ("train_time_s", "warmup_end_s"):
            v = state.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf):
                raise ValueError(f"{where}: train_clock.{key} {v!r}; expected a number of seconds >= 0")
        self._base = float(state.get("train_time_s") or 0.0)
        w = state.get("warmup_end_s")
        self.warmup_end_s = float(w) if w is not None else None
        if self._t0 is not None:
            self.start(self._first_step)

    # ----- checkpoints by time and the run-time estimate ---------------------------------------
    def save_due(self) -> bool:
        """save_minutes of wall time have passed since the last save (or the start)."""
        return self.save_s > 0 and self.clock() - self._t_last_save >= self.save_s

    def saved(self) -> None:
        self._t_last_save = self.clock()

    def step_done(self, step: int) -> float | None:
        """Seconds per step, returned once: ESTIMATE_AFTER steps after the first one this process ran."""
        done = step - self._first_step
        if done == 1:
            self._t_first_done = self.clock()
        elif done == 1 + ESTIMATE_AFTER and self._t_first_done is not None:
            return (self.clock() - self._t_first_done) / ESTIMATE_AFTER
        return None

    def log_estimate(self, per_step: float, step: int, max_steps: int, where: str, model_cfg: ModelConfig,
                     save_interval: int) -> float | None:
        """Log how long the run takes on `where` at `per_step` seconds a step (warn past a day, naming a smaller
        preset and the max_steps that fit in a day); the estimate in seconds, None for a time-budgeted run."""
        if self.has_budget:
            logger.info("estimate: %.2f s/step; the run stops after %s of training time (max_minutes)",
                        per_step, format_duration(self.budget_s))
            return None
        left = max(0, max_steps - step)
        total = self.wall_s() + per_step * left
        self.estimate_s = total
        logger.info("estimate: the whole run takes about %s on %s (%.2f s/step, %d steps left)",
                    format_duration(total), where, per_step, left)
        if total > DAY_S:
            fits = max(1, int((DAY_S - self.wall_s()) / per_step) + step)
            smaller = smaller_preset(model_cfg)
            hint = f"a smaller preset (preset={smaller}, or config={smaller}) or " if smaller else ""
            logger.warning("this run would take about %s on %s, more than a day: choose %sfewer steps (max_steps=%d "
                           "takes about a day here); checkpoints are written every %s steps and every %s minutes",
                           format_duration(total), where, hint, fits, save_interval, f"{self.save_s / 60:g}")
        return total
