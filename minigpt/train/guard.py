"""Resource guard (max_cpu / max_memory / max_gpu_memory / disable_monitoring): pause training between
steps while the machine is overloaded, and resume when usage falls back below the limit minus a margin.

It never kills anything. Readings come from psutil (CPU %, memory %) and torch.cuda (GPU memory %);
`read` is injectable so tests can feed readings. A reading is taken at most every `interval` seconds,
and `psutil.cpu_percent(interval=None)` does not block, so the guard costs well under 1% of a step.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..config import GUARD_RESUME_MARGIN, GuardConfig, TrainConfig

logger = logging.getLogger(__name__)

Reading = dict[str, float]  # {"cpu": %, "memory": %, "gpu_memory": %}


def read_usage() -> Reading:
    """Current system-wide CPU % (since the previous call), memory % and CUDA memory % where present."""
    import psutil

    out = {"cpu": float(psutil.cpu_percent(interval=None)), "memory": float(psutil.virtual_memory().percent)}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            out["gpu_memory"] = 100.0 * (total - free) / total
    except Exception:  # a driver hiccup must not stop training
        pass
    return out


@dataclass
class Limits:
    cpu: float = 0.0  # 0 or 100 = no limit
    memory: float = 0.0
    gpu_memory: float = 0.0

    def over(self, reading: Reading, margin: float = 0.0) -> list[tuple[str, float, float]]:
        """(name, reading, limit) for every limit that `reading` exceeds (limit - margin when resuming)."""
        out = []
        for name in ("cpu", "memory", "gpu_memory"):
            limit = getattr(self, name)
            value = reading.get(name)
            if 0 < limit < 100 and value is not None and value > limit - margin:
                out.append((name, value, limit))
        return out


class ResourceGuard:
    """Call `wait_if_needed(stop_event)` between steps; it returns at once unless a limit is exceeded."""

    def __init__(self, max_cpu: float = 0.0, max_memory: float = 0.0, max_gpu_memory: float = 0.0,
                 interval: float = 2.0, margin: float = GUARD_RESUME_MARGIN, poll: float = 1.0,
                 read: Callable[[], Reading] = read_usage, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] | None = None) -> None:
        self.limits = Limits(max_cpu, max_memory, max_gpu_memory)
        for name in ("cpu", "memory", "gpu_memory"):
            limit = getattr(self.limits, name)
            if 0 < limit < 100 and limit <= margin:  # usage would have to fall below zero to resume
                raise ValueError(f"max_{name}: a limit of {limit:g}% is at or under the resume margin ({margin:g}%): "
                                 f"a paused run would never resume; use a limit above {margin:g} or 0 for no limit")
        self.interval, self.margin, self.poll = interval, margin, poll
        self.read, self.clock = read, clock
        self._sleep = sleep
        self._last_check = -float("inf")
        self.last_reading: Reading = {}
        self.pauses = 0
        self.paused_s = 0.0
        self.events: list[dict] = []  # pause / resume records, for the log and tests
        if read is read_usage:
            read_usage()  # prime psutil's cpu_percent so the first real reading covers a real interval

    @classmethod
    def from_config(cls, cfg: TrainConfig | GuardConfig, **kw: Any) -> "ResourceGuard | None":
        """From a TrainConfig's guard group (or a GuardConfig); None when monitoring is disabled or no limit
        is set (then there is nothing to do, at zero cost)."""
        g = cfg.guard if isinstance(cfg, TrainConfig) else cfg
        if g.disable_monitoring or not any(0 < v < 100 for v in (g.max_cpu, g.max_memory, g.max_gpu_memory)):
            return None
        return cls(g.max_cpu, g.max_memory, g.max_gpu_memory, interval=g.guard_interval, **kw)

    def check(self, force: bool = False) -> list[tuple[str, float, float]]:
        """Take a reading if `interval` has passed since the last one; return the limits it exceeds."""
        now = self.clock()
        if not force and now - self._last_check < self.interval:
            return []
        self._last_check = now
        self.last_reading = self.read()
        return self.limits.over(self.last_reading)

    def wait_if_needed(self, stop: threading.Event | None = None) -> float:
        """Block while over a limit (until usage < limit - margin, or `stop` is set). Returns seconds paused."""
        over = self.check()
        if not over:
            return 0.0
        stop = stop or threading.Event()
        self.pauses += 1
        what = ", ".join(f"{n} {v:.0f}% > limit {lim:.0f}%" for n, v, lim in over)
        logger.warning("resource guard: pausing training (%s); resuming below limit - %.0f%%", what, self.margin)
        self.events.append({"event": "pause", "reading": dict(self.last_reading), "over": [n for n, _, _ in over]})
        t0 = self.clock()
        while not stop.is_set():
            if self._sleep is not None:
                self._sleep(self.poll)
            else:
                stop.wait(self.poll)
            self.last_reading = self.read()
            self._last_check = self.clock()
            if not self.limits.over(self.last_reading, self.margin):
                break
        paused = self.clock() - t0
        self.paused_s += paused
        reading = ", ".join(f"{k} {v:.0f}%" for k, v in self.last_reading.items())
        if self.limits.over(self.last_reading, self.margin):  # the loop ended on the stop request, not on usage
            logger.warning("resource guard: stop requested while paused (%.1fs, still %s); not resuming, "
                           "the run saves and stops", paused, reading)
            self.events.append({"event": "stopped", "reading": dict(self.last_reading), "paused_s": paused})
            return paused
        logger.warning("resource guard: resuming after %.1fs (%s)", paused, reading)
        self.events.append({"event": "resume", "reading": dict(self.last_reading), "paused_s": paused})
        return paused
