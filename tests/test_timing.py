import statistics

import pytest

from qatlab import timing


class _Clock:
    """A fake perf_counter: each call to a timed fn advances it by that fn's cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _fake(clock: _Clock, costs: list[float], calls: list[str], name: str):
    it = iter(costs)

    def fn() -> None:
        calls.append(name)
        clock.now += next(it)

    return fn


def test_median_time_is_the_median_of_the_calls(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    costs = [5.0, 1.0, 3.0, 2.0, 100.0]
    assert timing.median_time(_fake(clock, costs, [], "f"), len(costs)) == statistics.median(costs)


def test_interleaved_runs_round_robin_after_warmup(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    calls: list[str] = []
    a = _fake(clock, [9.0, 9.0, 1.0, 2.0, 3.0], calls, "a")
    b = _fake(clock, [9.0, 9.0, 10.0, 30.0, 20.0], calls, "b")
    got = timing.interleaved({"a": a, "b": b}, repeats=3, warmup=2)
    assert got == {"a": 2.0, "b": 20.0}  # warm-up calls (cost 9) are not in the medians
    assert calls == ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b"]


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"repeats": 1.5}, {"repeats": True}, {"warmup": -1}])
def test_interleaved_rejects_bad_counts(kwargs):
    with pytest.raises(ValueError, match="repeats|warmup"):
        timing.interleaved({"f": lambda: None}, **kwargs)


def test_interleaved_needs_a_function():
    with pytest.raises(ValueError, match="at least one"):
        timing.interleaved({})


def test_median_time_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats"):
        timing.median_time(lambda: None, 0)


def test_machine_names_what_was_measured_on():
    m = timing.machine()
    assert set(m) == {"host", "cpu", "cores", "torch", "threads"}
    assert isinstance(m["threads"], int) and m["threads"] >= 1


def test_the_cpu_clock_times_by_process_time(monkeypatch):
    wall, cpu = _Clock(), _Clock()
    monkeypatch.setattr(timing.time, "perf_counter", wall)
    monkeypatch.setattr(timing.time, "process_time", cpu)
    got = timing.interleaved_samples({"a": _fake(cpu, [7.0, 1.0, 4.0], [], "a")}, repeats=2, warmup=1, clock="cpu")
    assert got == {"a": [1.0, 4.0]} and wall.now == 0.0
    with pytest.raises(ValueError, match="clock must be one of wall, cpu"):
        timing.interleaved_samples({"a": lambda: None}, clock="gpu")


def test_load_average_is_the_one_minute_figure_or_none(monkeypatch):
    monkeypatch.setattr(timing.os, "getloadavg", lambda: (1.234, 2.0, 3.0))
    assert timing.load_average() == 1.23

    def no_figure():
        raise OSError("not on this platform")

    monkeypatch.setattr(timing.os, "getloadavg", no_figure)
    assert timing.load_average() is None
