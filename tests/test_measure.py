"""The one timing primitive: median and spread of known durations (on a fake clock), warm-up, setup
outside the clock, batching short calls, sync placement, early stop; and the torch-threads context manager."""

from __future__ import annotations

import time

import pytest

from toolkit.measure import Timing, relative_iqr, time_callable, torch_threads


class FakeClock:
    """A clock that moves only when a fake call says so: the timing arithmetic, without sleeping (sleep-ratio
    asserts are flaky on shared cores)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def work(self, seconds: float):
        """A callable that 'takes' ``seconds`` on this clock."""
        def fn():
            self.t += seconds
        return fn


def test_median_and_spread_of_known_durations():
    clock = FakeClock()
    durations = iter([0.5, 0.010, 0.012, 0.011, 0.030, 0.010, 0.014, 0.009, 0.013, 0.011])  # first: warm-up

    def fn():
        clock.t += next(durations)

    t = time_callable(fn, warmup=1, repeats=9, clock=clock)
    samples = [0.010, 0.012, 0.011, 0.030, 0.010, 0.014, 0.009, 0.013, 0.011]
    assert t.repeats == 9 and t.number == 1
    assert t.samples_s == pytest.approx(samples)
    assert t.median_s == pytest.approx(0.011) and t.max_s == pytest.approx(0.030)  # the 0.5 s warm-up is not a sample
    assert t.spread == pytest.approx(relative_iqr(samples)) and t.spread == pytest.approx((0.013 - 0.010) / 0.011)
    assert t.rate(1.0) == pytest.approx(1 / 0.011)


def test_longer_call_gives_proportionally_longer_median():
    clock = FakeClock()
    short = time_callable(clock.work(0.005), repeats=5, clock=clock)
    long = time_callable(clock.work(0.025), repeats=5, clock=clock)
    assert long.median_s / short.median_s == pytest.approx(5.0)


def test_warmup_calls_are_not_timed():
    clock = FakeClock()
    calls = []

    def fn():
        calls.append(1)
        clock.t += 0.05 if len(calls) <= 2 else 0.001  # the first two calls are slow (lazy initialisation)

    t = time_callable(fn, warmup=2, repeats=5, clock=clock)
    assert len(calls) == 7
    assert t.max_s == pytest.approx(0.001)


def test_setup_runs_before_every_call_outside_the_clock():
    clock = FakeClock()
    events = []

    def setup():
        events.append("setup")
        clock.t += 0.02

    def fn():
        events.append("fn")
        clock.t += 0.002

    t = time_callable(fn, warmup=1, repeats=4, setup=setup, clock=clock)
    assert events == ["setup", "fn"] * 5
    assert t.max_s == pytest.approx(0.002)  # the 20 ms setup is in no sample


def test_min_time_batches_short_calls():
    clock = FakeClock()
    n = [0]

    def fn():
        n[0] += 1
        clock.t += 2**-10  # ~1 ms, exact in binary so the ratio below is exact

    t = time_callable(fn, warmup=1, repeats=3, min_time_s=20 * 2**-10, clock=clock)
    assert t.number == 20  # min_time / the warm-up call's time
    assert n[0] == 1 + 3 * t.number
    assert t.median_s == pytest.approx(2**-10)  # per call, not per sample


def test_sync_brackets_the_timed_region():
    log = []
    t = time_callable(lambda: log.append("fn"), warmup=0, repeats=2, sync=lambda: log.append("sync"))
    assert log == ["sync", "fn", "sync"] * 2
    assert t.repeats == 2


def test_max_time_stops_early_but_keeps_three_samples():
    clock = FakeClock()
    t = time_callable(clock.work(0.02), warmup=0, repeats=50, max_time_s=0.01, clock=clock)
    assert t.repeats == 3
    t = time_callable(clock.work(0.002), warmup=0, repeats=50, max_time_s=0.011, clock=clock)
    assert t.repeats == 6  # stops at the first sample past 11 ms


def test_real_clock_is_the_default():
    t = time_callable(lambda: time.sleep(0.002), warmup=0, repeats=2)
    assert t.min_s >= 0.0019  # a sleep never returns early (no upper bound: shared cores)


def test_relative_iqr_and_timing_validation():
    assert relative_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
    assert relative_iqr([2.0]) == 0.0
    t = Timing.from_samples([0.3, 0.1, 0.2])
    assert t.median_s == 0.2 and t.repeats == 3
    assert t.to_dict()["samples_s"] == [0.3, 0.1, 0.2]
    with pytest.raises(ValueError):
        Timing.from_samples([])
    with pytest.raises(ValueError):
        time_callable(lambda: None, repeats=0)


def test_torch_threads_sets_and_restores():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with torch_threads(target) as n:
        assert n == target and torch.get_num_threads() == target
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(target):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with torch_threads(None) as n:  # a profile with runtime.threads: null leaves torch alone
        assert n == before and torch.get_num_threads() == before
