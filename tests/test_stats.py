"""Paired differences on the same examples: bootstrap interval and McNemar's exact test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.evaluate import ExampleResult, TaskResult
from toolkit.stats import PairedDifference, mcnemar_exact_p, paired_difference, paired_from_results


def _pair(n=200, better=30, seed=0, base_rate=0.5):
    """Reference 0/1 scores, and other = reference right on ``better`` more examples (wrong ones flipped)."""
    rng = np.random.default_rng(seed)
    ref = (rng.random(n) < base_rate).astype(float)
    other = ref.copy()
    other[np.flatnonzero(ref == 0)[:better]] = 1.0
    return ref, other


def _binom_two_sided_by_enumeration(b: int, c: int) -> float:
    """scipy.stats.binomtest's two-sided rule (sum of outcomes no more likely than the observed one), by
    brute force in floats: an independent route to the same number for p = 1/2."""
    m = b + c
    probs = [math.comb(m, i) / 2 ** m for i in range(m + 1)]
    return min(1.0, sum(p for p in probs if p <= probs[b] * (1 + 1e-7)))


def test_identical_scores_differ_by_nothing():
    ref, _ = _pair()
    d = paired_difference(ref, ref)
    assert d.delta == 0.0 and (d.ci_low, d.ci_high) == (0.0, 0.0) and d.mcnemar_p == 1.0
    assert d.other_only == d.reference_only == 0 and d.n == 200 and d.reference_mean == d.other_mean


def test_thirty_more_right_of_two_hundred():
    ref, other = _pair(200, 30)
    d = paired_difference(ref, other)
    assert d.delta == pytest.approx(0.15) and d.other_mean - d.reference_mean == pytest.approx(0.15)
    assert 0.0 < d.ci_low < 0.15 < d.ci_high < 0.3  # excludes 0, contains the estimate
    assert d.other_only == 30 and d.reference_only == 0
    assert d.mcnemar_p == pytest.approx(2 * 0.5 ** 30) and d.mcnemar_p < 1e-6
    # with disagreements both ways: 40 vs 10 discordant pairs
    ref2 = np.r_[np.zeros(40), np.ones(10), np.ones(150)]
    oth2 = np.r_[np.ones(40), np.zeros(10), np.ones(150)]
    d2 = paired_difference(ref2, oth2)
    assert d2.delta == pytest.approx(0.15) and d2.ci_low > 0
    assert d2.mcnemar_p == pytest.approx(_binom_two_sided_by_enumeration(40, 10), rel=1e-9) and d2.mcnemar_p < 1e-4
    # the reverse comparison is the mirror image
    back = paired_difference(oth2, ref2)
    assert back.delta == pytest.approx(-0.15) and back.ci_high < 0 and back.mcnemar_p == d2.mcnemar_p


def test_the_bootstrap_interval_agrees_with_the_normal_paired_interval():
    ref, other = _pair(2000, 120, seed=3)
    other[np.flatnonzero(ref == 1)[:60]] = 0.0  # some losses too
    d = paired_difference(ref, other, n_boot=20000)
    diff = other - ref
    half = 1.959964 * diff.std(ddof=1) / math.sqrt(len(diff))
    assert d.ci_low == pytest.approx(d.delta - half, abs=0.15 * half)
    assert d.ci_high == pytest.approx(d.delta + half, abs=0.15 * half)
    # and it is much narrower than two independent standard errors would make it
    independent = 1.959964 * math.sqrt(ref.var(ddof=1) / len(ref) + other.var(ddof=1) / len(other))
    assert d.ci_high - d.ci_low < independent


def test_the_interval_narrows_with_more_examples():
    ref, other = _pair(200, 20)
    small = paired_difference(ref, other)
    large = paired_difference(np.tile(ref, 10), np.tile(other, 10))  # same rates, 10x the examples
    assert large.delta == pytest.approx(small.delta)
    ratio = (large.ci_high - large.ci_low) / (small.ci_high - small.ci_low)
    assert ratio == pytest.approx(1 / math.sqrt(10), rel=0.2)
    assert large.mcnemar_p < small.mcnemar_p


def test_same_seed_same_interval():
    ref, other = _pair(300, 12, seed=5)
    a, b = paired_difference(ref, other, seed=7), paired_difference(ref, other, seed=7)
    assert a == b and a.to_dict() == b.to_dict()
    # the seed is the resampling's: real-valued scores (no grid of attainable deltas) show it moving
    x, y = np.random.default_rng(1).normal(size=(2, 300))
    assert paired_difference(x, y, seed=7) == paired_difference(x, y, seed=7)
    assert paired_difference(x, y, seed=8).ci_low != paired_difference(x, y, seed=7).ci_low
    assert paired_difference(ref, other, confidence=0.5).ci_high < a.ci_high  # a lower confidence is narrower


def test_real_valued_scores_use_the_sign_test():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=100)
    other = ref + 0.5 + rng.normal(scale=0.1, size=100)
    d = paired_difference(ref, other)
    assert d.delta == pytest.approx(float(np.mean(other - ref))) and d.ci_low > 0
    assert d.other_only + d.reference_only == 100 and d.mcnemar_p < 1e-10


def test_large_counts_neither_overflow_nor_lose_the_tail():
    p = mcnemar_exact_p(3000, 3100)  # 6100 discordant pairs: 2**6100 is far beyond a float
    z = (100 - 1) / math.sqrt(6100)  # normal approximation with continuity correction
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.02)
    assert mcnemar_exact_p(0, 5000) == 0.0 or mcnemar_exact_p(0, 5000) < 1e-300
    assert mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(7, 2) == pytest.approx(_binom_two_sided_by_enumeration(7, 2), rel=1e-12)


@pytest.mark.parametrize("ref,other,message", [
    ([], [], "empty"),
    ([1, 0, 1], [1, 0], "same examples"),
    ([1.0, float("nan")], [1, 0], "non-finite"),
    ([[1, 0]], [[1, 0]], "1-D"),
])
def test_bad_inputs_are_value_errors(ref, other, message):
    with pytest.raises(ValueError, match=message):
        paired_difference(ref, other)


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="n_boot"):
        paired_difference([1, 0], [0, 1], n_boot=0)
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1, 0], [0, 1], confidence=1.0)
    with pytest.raises(ValueError, match="ci_low"):
        PairedDifference(n=2, reference_mean=0.5, other_mean=0.5, delta=0.0, ci_low=0.1, ci_high=0.0, mcnemar_p=1.0)


# -- from evaluation results ---------------------------------------------------------------------------
def _result(ids, labels, preds, pred_norms=None, task="items", split="report"):
    per = tuple(ExampleResult(i, y, (0.0, 0.0), p, q) for i, y, p, q in zip(ids, labels, preds, pred_norms or preds))
    acc = float(np.mean([p == y for p, y in zip(preds, labels)]))
    acc_norm = float(np.mean([e.pred_norm == e.label for e in per]))
    return TaskResult(task=task, n=len(per), acc=acc, acc_stderr=0.0, acc_norm=acc_norm, acc_norm_stderr=0.0,
                      seconds=0.0, metrics=("acc",), higher_is_better={"acc": True}, split=split, per_example=per)


def test_paired_from_results_aligns_by_example_id():
    ref_s, oth_s = _pair(60, 9, seed=2)
    ids = [f"q{i}" for i in range(60)]
    labels = [i % 3 for i in range(60)]
    ref = _result(ids, labels, [y if s else (y + 1) % 3 for y, s in zip(labels, ref_s)])
    order = np.random.default_rng(0).permutation(60)  # the other result lists the examples in another order
    oth_preds = [y if s else (y + 1) % 3 for y, s in zip(labels, oth_s)]
    other = _result([ids[i] for i in order], [labels[i] for i in order], [oth_preds[i] for i in order])
    assert paired_from_results(ref, other) == paired_difference(ref_s, oth_s)
    # acc_norm pairs pred_norm, not pred
    norm = _result(ids, labels, [(y + 1) % 3 for y in labels], pred_norms=labels)
    d = paired_from_results(ref, norm, metric="acc_norm")
    assert d.other_mean == 1.0 and d.reference_mean == pytest.approx(ref.acc_norm)


def test_paired_from_results_refuses_different_examples():
    ids = [f"q{i}" for i in range(10)]
    ref = _result(ids, [0] * 10, [0] * 10)
    with pytest.raises(ValueError, match="not the same examples.*search part.*only in reference e.g. 'q0'"):
        paired_from_results(ref, _result([f"q{i}" for i in range(1, 11)], [0] * 10, [0] * 10, split="search"))
    with pytest.raises(ValueError, match="different tasks"):
        paired_from_results(ref, _result(ids, [0] * 10, [0] * 10, task="other"))
    with pytest.raises(ValueError, match="label"):
        paired_from_results(ref, _result(ids, [1] + [0] * 9, [0] * 10))
    with pytest.raises(ValueError, match="metric"):
        paired_from_results(ref, ref, metric="f1")
    bare = TaskResult(task="items", n=10, acc=1.0, acc_stderr=0.0, acc_norm=1.0, acc_norm_stderr=0.0, seconds=0.0,
                      metrics=("acc",), higher_is_better={"acc": True})
    with pytest.raises(ValueError, match="no per-example"):
        paired_from_results(ref, bare)


def test_paired_on_a_tiny_model_and_its_sub_network(tmp_path):
    """End to end: parent and sub-network on the report part of a task, compared example by example."""
    import json

    from toolkit.elastic import extract
    from toolkit.evaluate import evaluate_task
    from toolkit.importance import compute_importance
    from toolkit.models.tiny import byte_tokenizer, llama_tiny
    from toolkit.space import SubnetConfig
    from toolkit.tasks import get_task, load_task

    import torch

    rows = [{"id": f"q{i}", "context": f"Question: {i} plus {i}?\nAnswer:", "choices": [f" {2 * i}", f" {i}", " no"],
             "label": i % 3} for i in range(40)]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_task(get_task(str(path)))
    parent, tok = llama_tiny(), byte_tokenizer()
    importance = compute_importance(parent, [torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(1))])
    child = extract(parent, SubnetConfig(layers=(0, 1, 3), mlp=(128, 256, 64), heads=(4, 2, 2)), importance)
    a = evaluate_task(parent, tok, data, split="report", progress=False)
    b = evaluate_task(child, tok, data, split="report", progress=False)
    d = paired_from_results(a, b)
    assert d.n == 20 and d.delta == pytest.approx(b.acc - a.acc) and d.ci_low <= d.delta <= d.ci_high
    assert paired_from_results(a, a).delta == 0.0
    with pytest.raises(ValueError, match="not the same examples"):
        paired_from_results(a, evaluate_task(child, tok, data, split="search", progress=False))
