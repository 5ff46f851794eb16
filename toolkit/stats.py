"""Paired comparisons of two models on the same examples: the difference with a confidence interval.

A sub-network and its parent scored on the *same* examples are not two independent samples: most
examples are right (or wrong) for both, and only the examples where they disagree carry the difference.
Two independent standard errors ignore that pairing and overstate the uncertainty of the difference
several-fold; the paired statistics here use it:

* ``delta`` = mean(other) - mean(reference), a fraction (x100 for points);
* ``ci_low`` / ``ci_high``: the percentile paired bootstrap (resample examples, with their two scores
  together, ``n_boot`` times with a seeded ``numpy.random.Generator``; the quantiles of the resampled
  deltas). Same inputs and seed, same interval;
* ``mcnemar_p``: McNemar's exact test, the two-sided binomial test (p = 1/2) on the discordant pairs
  (examples where one is right and the other wrong). For real-valued scores it is the sign test on the
  non-zero differences, which is the same test on 0/1 scores.

Why hand-written: scipy would give the binomial test, but it is a large dependency for one sum; the
binomial tail is summed exactly in integers (``math.comb``'s recurrence, Python's big integers) and
divided once, so it neither overflows nor loses precision for tens of thousands of discordant pairs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

STATS_VERSION = 1
# Bootstrap resamples are drawn in chunks of at most this many (resample, example) indices (~32 MB int64).
_CHUNK_INDICES = 4_000_000


@dataclass(frozen=True)
class PairedDifference:
    """``other`` against ``reference`` on the same ``n`` examples (see the module docstring)."""

    n: int
    reference_mean: float
    other_mean: float
    delta: float  # other_mean - reference_mean, a fraction
    ci_low: float  # percentile paired bootstrap interval of delta, at ``confidence``
    ci_high: float
    mcnemar_p: float  # exact two-sided binomial test on the discordant pairs
    other_only: int = 0  # discordant pairs where other scored higher (0/1: other right, reference wrong)
    reference_only: int = 0  # ... where reference scored higher
    confidence: float = 0.95
    n_boot: int = 10000
    seed: int = 0
    method: str = "percentile paired bootstrap; McNemar exact (two-sided binomial on discordant pairs)"
    version: int = STATS_VERSION

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"PairedDifference: n must be positive, got {self.n}")
        if not self.ci_low <= self.ci_high:
            raise ValueError(f"PairedDifference: ci_low {self.ci_low} > ci_high {self.ci_high}")
        if not 0.0 <= self.mcnemar_p <= 1.0:
            raise ValueError(f"PairedDifference: mcnemar_p must be in [0, 1], got {self.mcnemar_p}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs: ``min(1, 2 P(X <= min(b, c)))``
    with ``X ~ Binomial(b + c, 1/2)``; 1.0 when there are none. Summed exactly in integers."""
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact_p: counts must be non-negative, got {b}, {c}")
    m, k = b + c, min(b, c)
    if m == 0:
        return 1.0
    term, tail = 1, 1  # comb(m, 0)
    for i in range(k):  # comb(m, i + 1) = comb(m, i) * (m - i) / (i + 1), exact
        term = term * (m - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2 ** m)  # big-integer true division: correctly rounded, no overflow


def _scores(values: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"paired_difference: {name} must be one score per example (1-D), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"paired_difference: {name} has non-finite scores")
    return a


def paired_difference(reference: Sequence[float], other: Sequence[float], n_boot: int = 10000, seed: int = 0,
                      confidence: float = 0.95) -> PairedDifference:
    """``other`` minus ``reference``, per-example scores (0/1 or real) on the same examples in the same
    order: the difference of means, its paired-bootstrap interval and McNemar's exact p-value."""
    ref, oth = _scores(reference, "reference"), _scores(other, "other")
    if len(ref) == 0 or len(oth) == 0:
        raise ValueError("paired_difference: no scores (empty input)")
    if len(ref) != len(oth):
        raise ValueError(f"paired_difference: {len(ref)} reference scores but {len(oth)} other scores; "
                         "a paired comparison needs the same examples")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"paired_difference: n_boot must be a positive integer, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"paired_difference: confidence must be in (0, 1), got {confidence}")
    n = len(ref)
    d = oth - ref  # (n,)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot, dtype=np.float64)
    rows = max(1, _CHUNK_INDICES // n)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (rows, n) resampled example indices
        boot[start:stop] = d[idx].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    b, c = int(np.sum(d > 0)), int(np.sum(d < 0))
    delta = float(oth.mean() - ref.mean())
    return PairedDifference(n=n, reference_mean=float(ref.mean()), other_mean=float(oth.mean()), delta=delta,
                            ci_low=float(lo), ci_high=float(hi), mcnemar_p=mcnemar_exact_p(b, c), other_only=b,
                            reference_only=c, confidence=confidence, n_boot=n_boot, seed=seed)


def paired_from_results(reference, other, metric: str = "acc", n_boot: int = 10000, seed: int = 0,
                        confidence: float = 0.95) -> PairedDifference:
    """:func:`paired_difference` of two :class:`toolkit.evaluate.TaskResult` s, their per-example
    correctness (``acc``: ``pred``; ``acc_norm``: ``pred_norm``; ``ExampleResult.score``) aligned by example id. Raises ValueError
    unless both were measured on the same task and the same examples (same ids, same labels)."""
    if metric not in ("acc", "acc_norm"):
        raise ValueError(f"paired_from_results: metric must be 'acc' or 'acc_norm', got {metric!r}")
    if reference.task != other.task:
        raise ValueError(f"paired_from_results: different tasks ({reference.task!r} and {other.task!r})")
    rows = {}
    for side, result in (("reference", reference), ("other", other)):
        if not result.per_example:
            raise ValueError(f"paired_from_results: the {side} result has no per-example results")
        by_id = {e.id: e for e in result.per_example}
        if len(by_id) != len(result.per_example):
            raise ValueError(f"paired_from_results: the {side} result has repeated example ids; cannot align them")
        rows[side] = by_id
    ref_ids, oth_ids = set(rows["reference"]), set(rows["other"])
    if ref_ids != oth_ids:
        only_ref, only_oth = sorted(ref_ids - oth_ids), sorted(oth_ids - ref_ids)
        raise ValueError(
            f"paired_from_results: {reference.task}: not the same examples (reference: {len(ref_ids)} on the "
            f"{reference.split} part, limit {reference.limit}, seed {reference.seed}; other: {len(oth_ids)} on the "
            f"{other.split} part, limit {other.limit}, seed {other.seed}; {len(only_ref)} only in reference"
            f"{' e.g. ' + repr(only_ref[0]) if only_ref else ''}, {len(only_oth)} only in other"
            f"{' e.g. ' + repr(only_oth[0]) if only_oth else ''})")
    ids = [e.id for e in reference.per_example]  # the reference's order
    ref_scores, oth_scores = [], []
    for i in ids:
        r, o = rows["reference"][i], rows["other"][i]
        if r.label != o.label:
            raise ValueError(f"paired_from_results: example {i!r} has label {r.label} in reference, {o.label} in other")
        ref_scores.append(r.score(metric))
        oth_scores.append(o.score(metric))
    return paired_difference(ref_scores, oth_scores, n_boot=n_boot, seed=seed, confidence=confidence)
