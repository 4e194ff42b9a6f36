"""Resource guard: injected readings pause and resume training between steps; it never kills; it is cheap."""
import json
import time

import pytest

from minigpt import TrainConfig
from minigpt.train.guard import Limits, ResourceGuard, read_usage
from minigpt.params import load_params
from test_trainer import make_trainer


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def feed(readings):
    it = iter(readings)
    calls = []

    def read():
        r = next(it)
        calls.append(r)
        return r

    read.calls = calls
    return read


def test_limits_arithmetic():
    lim = Limits(cpu=70, memory=80)
    assert lim.over({"cpu": 71, "memory": 50}) == [("cpu", 71, 70)]
    assert lim.over({"cpu": 69, "memory": 81}) == [("memory", 81, 80)]
    assert lim.over({"cpu": 66, "memory": 50}, margin=5) == [("cpu", 66, 70)]  # not yet below limit - margin
    assert lim.over({"cpu": 64, "memory": 74}, margin=5) == []
    assert Limits().over({"cpu": 100, "memory": 100, "gpu_memory": 100}) == []  # 0 = no limit
    assert Limits(100, 100, 100).over({"cpu": 100, "memory": 100, "gpu_memory": 100}) == []  # 100 = no limit


def test_pause_until_below_limit_minus_margin(caplog):
    clock = FakeClock()
    read = feed([{"cpu": 95, "memory": 40}, {"cpu": 88, "memory": 40}, {"cpu": 86, "memory": 40}, {"cpu": 80, "memory": 40}])
    g = ResourceGuard(max_cpu=90, max_memory=90, interval=2.0, margin=5.0, poll=1.0, read=read, clock=clock, sleep=clock.sleep)
    with caplog.at_level("WARNING", logger="minigpt.train.guard"):
        paused = g.wait_if_needed()
    assert len(read.calls) == 4  # 95 pauses; 88 and 86 are above 90-5; 80 resumes
    assert paused == pytest.approx(3.0) and g.pauses == 1
    assert [e["event"] for e in g.events] == ["pause", "resume"]
    text = caplog.text
    assert "cpu 95% > limit 90%" in text and "resuming" in text  # the reading and the limit are logged
    # within `interval` no new reading is taken: the common path costs nothing
    assert g.wait_if_needed() == 0.0 and len(read.calls) == 4


def test_stop_request_ends_a_pause():
    import threading

    stop = threading.Event()
    clock = FakeClock()

    def read():
        stop.set()  # e.g. Ctrl+C arrives while paused
        return {"cpu": 99}

    g = ResourceGuard(max_cpu=50, read=read, clock=clock, sleep=clock.sleep)
    g.wait_if_needed(stop)
    assert g.events[-1]["event"] == "stopped"  # what really happened: the stop request, not a resume


def test_from_config():
    assert ResourceGuard.from_config(TrainConfig()) is None  # no limit set: no guard, no cost
    assert ResourceGuard.from_config(TrainConfig.from_flat(max_cpu=0, max_memory=100, max_gpu_memory=0)) is None
    assert ResourceGuard.from_config(TrainConfig.from_flat(max_cpu=70, disable_monitoring=True)) is None
    g = ResourceGuard.from_config(TrainConfig.from_flat(max_cpu=70, max_memory=60, max_gpu_memory=80, guard_interval=0.5))
    assert (g.limits.cpu, g.limits.memory, g.limits.gpu_memory, g.interval) == (70, 60, 80, 0.5)
    with pytest.raises(ValueError, match="max_cpu"):
        TrainConfig.from_flat(max_cpu=150).validate()


def test_guard_parameters_in_notebooks_03_and_04():
    for section in ("pretrain", "sft"):
        P = load_params(section, config="ci", max_cpu=70, max_memory=60.5, max_gpu_memory=80, disable_monitoring=True)
        assert (P.max_cpu, P.max_memory, P.max_gpu_memory, P.disable_monitoring) == (70.0, 60.5, 80.0, True)


def test_real_readings_are_cheap():
    r = read_usage()
    assert 0 <= r["cpu"] <= 100 and 0 < r["memory"] <= 100
    t = time.perf_counter()
    for _ in range(20):
        read_usage()
    per_read = (time.perf_counter() - t) / 20
    assert per_read < 0.01  # non-blocking cpu_percent
    g = ResourceGuard(max_cpu=100, max_memory=100, interval=60)
    t = time.perf_counter()
    for _ in range(2000):
        g.wait_if_needed()
    assert (time.perf_counter() - t) / 2000 < 2e-5  # between readings: a clock read and a compare


def test_trainer_pauses_between_steps_and_logs_the_reading(tmp_path):
    clock = FakeClock()
    readings = [{"cpu": 20, "memory": 97}, {"cpu": 20, "memory": 96}, {"cpu": 20, "memory": 50}] + [{"cpu": 20, "memory": 50}] * 50
    read = feed(readings)
    guard = ResourceGuard(max_memory=95, interval=0.0, margin=5, read=read, clock=clock, sleep=clock.sleep)
    t = make_trainer(tmp_path, max_steps=4, guard=guard)
    t.fit()
    assert t.step == 4 and guard.pauses == 1 and guard.paused_s == pytest.approx(2.0)
    recs = [json.loads(l) for l in open(t.metrics_path)]
    assert recs[0]["memory_percent"] == 50  # the guard's readings are logged with the metrics


def test_trainer_builds_guard_from_config(tmp_path):
    assert make_trainer(tmp_path, max_steps=2).guard is None
    t = make_trainer(tmp_path, max_steps=2, max_memory=99.9)
    assert isinstance(t.guard, ResourceGuard) and t.guard.limits.memory == 99.9
    assert make_trainer(tmp_path, max_steps=2, max_memory=99.9, disable_monitoring=True).guard is None
