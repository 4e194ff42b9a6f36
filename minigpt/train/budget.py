"""A run's training clock and time budget (`max_minutes`): wall clock minus the time spent evaluating, saving
checkpoints, sampling and pausing for the resource guard.

With a budget the run stops when its training time reaches `max_minutes`, and the learning-rate schedule runs
against that time (schedules.TimeProgress), so warmup ends after `warmup_steps` and the decay ends with the
budget. The training time is saved in every checkpoint's trainer_state.json; a resumed run continues the clock.

A time-budgeted run is not bitwise reproducible: where it stops, and the learning rate at each step, depend on
how fast this machine ran. Step-based runs (no budget) do not read this clock and stay exact.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Iterator

from .schedules import TimeProgress


class TrainClock:
    """Training seconds of a run; `clock` is injectable (tests drive it by hand)."""

    def __init__(self, max_minutes: float = 0.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.budget_s = 60.0 * max_minutes
        self.clock = clock
        self.warmup_end_s: float | None = None
        self._base = 0.0  # training seconds before this process's start (a resumed run's)
        self._excluded = 0.0
        self._t0: float | None = None

    def start(self) -> None:
        """The loop begins: count from now, on top of what a resumed checkpoint recorded."""
        self._t0, self._excluded = self.clock(), 0.0

    def elapsed_s(self) -> float:
        if self._t0 is None:
            return self._base
        return self._base + (self.clock() - self._t0) - self._excluded

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
        """Continue from a checkpoint's clock (a checkpoint written before the clock existed: from zero)."""
        state = state or {}
        for key in ("train_time_s", "warmup_end_s"):
            v = state.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf):
                raise ValueError(f"{where}: train_clock.{key} {v!r}; expected a number of seconds >= 0")
        self._base = float(state.get("train_time_s") or 0.0)
        w = state.get("warmup_end_s")
        self.warmup_end_s = float(w) if w is not None else None
        if self._t0 is not None:
            self.start()
