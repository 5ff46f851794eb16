"""The project's one timing primitive: warm-up, synchronise, repeat, report the median and the spread.

Every number the toolkit reports as "measured" (a device's FLOP/s and memory bandwidth in
:mod:`toolkit.profiles`, a model's prefill latency and decode speed in :mod:`toolkit.calibrate.latency`) goes
through :func:`time_callable`, so that all of them mean the same thing:

* ``warmup`` untimed calls first (lazy initialisation, allocator growth, cuBLAS heuristics, caches);
* ``sync`` (e.g. ``torch.cuda.synchronize``; see :func:`sync_for`) is called before the clock starts and
  before it stops, so asynchronous device work is inside the timed region and nothing else is;
* each of the ``repeats`` samples times ``number`` back-to-back calls and divides by ``number``. With
  ``min_time_s`` set, ``number`` is chosen from the last warm-up call so that one sample lasts at least
  that long (the ``timeit.autorange`` idea: a 50 µs kernel is not timed one call at a time);
* an optional ``setup`` runs untimed before every call (e.g. build a fresh KV cache for a decode);
* the result is a :class:`Timing`: the median seconds per call, the spread, and every sample.

**Spread** is the relative interquartile range, ``(q75 - q25) / median`` (quartiles by linear
interpolation, as ``numpy.percentile``). It is used rather than ``(max - min) / median`` because on a
shared machine one descheduled sample would dominate max - min while leaving the median untouched.

Why hand-written rather than ``timeit`` or ``torch.utils.benchmark``: a decode step must be timed from a
freshly prefilled KV cache, so every timed call needs an *untimed* per-call setup. ``timeit`` and
``torch.utils.benchmark.Timer`` run their setup once per block of calls, not before each call, so the
cache would grow across a block and the step timed would not be the one deployed. Both also leave the
choice of spread statistic to us anyway; this module imports torch only inside :func:`sync_for` and
:func:`torch_threads`, so timing pure-Python callables stays cheap.

Model measurements (prefill latency, decode tokens/s with a KV cache, peak memory) are built on top of
this primitive in :mod:`toolkit.calibrate.latency`.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

__all__ = ["Timing", "time_callable", "time_prefill_decode", "sync_for", "torch_threads", "relative_iqr"]


def relative_iqr(samples: Sequence[float]) -> float:
    """``(q75 - q25) / median`` of ``samples`` (0.0 for fewer than two samples)."""
    if len(samples) < 2:
        return 0.0
    q25, _, q75 = statistics.quantiles(samples, n=4, method="inclusive")
    med = statistics.median(samples)
    return (q75 - q25) / med if med > 0 else 0.0


@dataclass(frozen=True)
class Timing:
    """Seconds per call of a timed callable: median over samples, relative spread, and the samples.

    ``samples_s[i]`` is the mean seconds per call within sample ``i`` (``number`` calls each).
    """

    median_s: float
    spread: float
    samples_s: tuple[float, ...]
    number: int = 1

    def __post_init__(self):
        if not self.samples_s:
            raise ValueError("Timing needs at least one sample")
        if self.number < 1:
            raise ValueError(f"number must be >= 1, got {self.number}")
        if not all(math.isfinite(s) and s >= 0 for s in self.samples_s):
            raise ValueError(f"samples must be finite and non-negative, got {self.samples_s}")

    @classmethod
    def from_samples(cls, samples_s: Sequence[float], number: int = 1) -> "Timing":
        samples = tuple(float(s) for s in samples_s)
        return cls(median_s=statistics.median(samples), spread=relative_iqr(samples), samples_s=samples, number=number)

    @property
    def repeats(self) -> int:
        """How many samples were taken."""
        return len(self.samples_s)

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    @property
    def max_s(self) -> float:
        return max(self.samples_s)

    def rate(self, work: float) -> float:
        """``work`` per second at the median (e.g. FLOP/s for ``work`` = FLOP per call)."""
        return work / self.median_s if self.median_s > 0 else math.inf

    def to_dict(self) -> dict:
        return {"median_s": self.median_s, "spread": self.spread, "repeats": self.repeats, "number": self.number,
                "samples_s": list(self.samples_s)}


def time_callable(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    repeats: int = 5,
    min_time_s: float = 0.0,
    sync: Callable[[], object] | None = None,
    setup: Callable[[], object] | None = None,
    max_time_s: float | None = None,
    max_number: int = 1_000_000,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` samples; see the module docstring.

    ``max_time_s`` caps the timed phase: once exceeded, sampling stops early but never before
    ``min(3, repeats)`` samples (a slow device still gets a median and a spread, just fewer samples).
    ``clock`` returns seconds (``time.perf_counter``; tests pass a fake one to check the arithmetic).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    _sync = sync or (lambda: None)

    def timed_call() -> float:
        if setup is not None:
            setup()
        _sync()
        t0 = clock()
        fn()
        _sync()
        return clock() - t0

    last = None
    for _ in range(warmup):
        last = timed_call()
    number = 1
    if min_time_s > 0:
        one = last if last is not None else timed_call()
        number = max(1, min(max_number, math.ceil(min_time_s / max(one, 1e-9))))

    samples: list[float] = []
    started = clock()
    for _ in range(repeats):
        if setup is not None:  # per-call setup must stay outside the clock: time each call on its own
            total = sum(timed_call() for _ in range(number))
        else:
            _sync()
            t0 = clock()
            for _ in range(number):
                fn()
            _sync()
            total = clock() - t0
        samples.append(total / number)
        if max_time_s is not None and len(samples) >= min(3, repeats) and clock() - started > max_time_s:
            break
    return Timing.from_samples(samples, number=number)


def time_prefill_decode(prefill, decode_from, repeats: int, warmup: int = 1, max_spread: float = 0.10, sync=None):
    """Time ``prefill() -> cache`` and ``decode_from(cache)`` (a fresh, untimed prefill before every timed
    decode); re-measured once with twice the repeats when either spread exceeds ``max_spread``.
    Returns (prefill Timing, decode Timing, flagged: still too noisy)."""
    def measure_both(n_repeats: int):
        t_prefill = time_callable(prefill, warmup=warmup, repeats=n_repeats, sync=sync)
        caches = []

        def setup():  # untimed: a fresh prefilled cache for each timed decode
            caches.append(prefill())

        def decode():
            decode_from(caches.pop())

        t_decode = time_callable(decode, warmup=warmup, repeats=n_repeats, sync=sync, setup=setup)
        return t_prefill, t_decode

    t_prefill, t_decode = measure_both(repeats)
    if max(t_prefill.spread, t_decode.spread) > max_spread:
        t_prefill, t_decode = measure_both(repeats * 2)
    return t_prefill, t_decode, max(t_prefill.spread, t_decode.spread) > max_spread


def sync_for(device) -> Callable[[], object] | None:
    """The synchronisation to pass as ``sync=`` for work on ``device`` (None for the CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":  # pragma: no cover - Apple only
        return torch.mps.synchronize
    return None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)``; restore the previous value afterwards.

    ``None`` (or 0) leaves the current setting alone. Yields the thread count in effect.
    """
    import torch

    previous = torch.get_num_threads()
    if not threads:
        yield previous
        return
    if threads < 0:
        raise ValueError(f"threads must be positive, got {threads}")
    torch.set_num_threads(int(threads))
    try:
        yield int(threads)
    finally:
        torch.set_num_threads(previous)

