"""The one timing primitive: median and spread of known sleeps, warm-up, setup outside the clock,
batching short calls, sync placement, early stop; and the torch-threads context manager."""

from __future__ import annotations

import time

import pytest

from toolkit.measure import Timing, relative_iqr, time_callable, torch_threads


def test_sleep_median_and_spread():
    t = time_callable(lambda: time.sleep(0.01), warmup=1, repeats=9)
    assert t.repeats == 9 and len(t.samples_s) == 9 and t.number == 1
    # A 10 ms sleep never returns early; on a busy 2-core machine it may overshoot by a few ms.
    assert 0.0099 <= t.median_s < 0.03
    assert t.min_s <= t.median_s <= t.max_s
    assert 0.0 <= t.spread < 0.5
    assert t.rate(1.0) == pytest.approx(1 / t.median_s)


def test_longer_sleep_gives_proportionally_longer_median():
    short = time_callable(lambda: time.sleep(0.005), repeats=5)
    long = time_callable(lambda: time.sleep(0.025), repeats=5)
    assert 3.0 < long.median_s / short.median_s < 6.0


def test_warmup_calls_are_not_timed():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= 2:  # the first two calls are slow (lazy initialisation)
            time.sleep(0.05)

    t = time_callable(fn, warmup=2, repeats=5)
    assert len(calls) == 7
    assert t.max_s < 0.02


def test_setup_runs_before_every_call_outside_the_clock():
    events = []

    def setup():
        events.append("setup")
        time.sleep(0.02)

    def fn():
        events.append("fn")
        time.sleep(0.002)

    t = time_callable(fn, warmup=1, repeats=4, setup=setup)
    assert events == ["setup", "fn"] * 5
    assert t.median_s < 0.015  # the 20 ms setup is not in the 2 ms call's time


def test_min_time_batches_short_calls():
    n = [0]

    def fn():
        n[0] += 1
        time.sleep(0.001)

    t = time_callable(fn, warmup=1, repeats=3, min_time_s=0.02)
    assert t.number >= 5
    assert n[0] == 1 + 3 * t.number
    assert 0.0009 < t.median_s < 0.005  # per call, not per sample


def test_sync_brackets_the_timed_region():
    log = []
    t = time_callable(lambda: log.append("fn"), warmup=0, repeats=2, sync=lambda: log.append("sync"))
    assert log == ["sync", "fn", "sync"] * 2
    assert t.repeats == 2


def test_max_time_stops_early_but_keeps_three_samples():
    t = time_callable(lambda: time.sleep(0.02), warmup=0, repeats=50, max_time_s=0.01)
    assert t.repeats == 3


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
