"""Per-example metrics of a multiple-choice item, as lm-evaluation-harness computes them, and chance.

* ``acc``: the argmax of the choices' summed log-likelihoods is the gold choice. For an item with several
  gold choices in lm-eval's *multiple-target* form (an lm-eval YAML whose ``doc_to_target`` gives a list),
  the argmax is one of them (``pred in gold``, ``lm_eval/api/task.py`` ``process_results``).
* ``acc_norm``: the same on log-likelihood / ``len(choice)`` in characters (see :mod:`toolkit.tasks`).
* ``mc2``: TruthfulQA's multi-true score, the normalised probability mass on the true answers
  (``lm_eval/tasks/truthfulqa/utils.py`` ``process_results_mc2``)::

      p = exp(ll);  mc2 = sum(p[true]) / sum(p)

  lm-eval splits the choices at the first false label (TruthfulQA lists its true answers first); this
  sums over every choice whose label is 1, the same number on TruthfulQA's layout, and computed in log
  space (``exp(logsumexp(ll[true]) - logsumexp(ll))``) so that long answers, whose ``exp(ll)`` underflows
  to 0 in lm-eval's float64, still give a number instead of 0/0.

**Chance** is the expected value of a metric under uniform guessing, per item: ``acc`` and ``acc_norm``
``1 / k`` for ``k`` choices (``g / k`` when ``g`` of them count as correct), ``mc2`` ``g / k`` (uniform
probabilities put mass ``g / k`` on the ``g`` true answers). A task's chance is the mean over its items.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

METRICS = ("acc", "acc_norm", "mc2")


def mc2(loglikelihoods: Sequence[float], true_choices: Sequence[int]) -> float:
    """lm-eval's MC2: the share of probability mass on the true choices (see the module doc)."""
    ll = np.asarray(loglikelihoods, dtype=np.float64)
    true = ll[list(true_choices)]
    top = ll.max()
    return float(np.exp(np.log(np.exp(true - top).sum()) - np.log(np.exp(ll - top).sum())))


def chance(metric: str, num_choices: int, num_true: int, multiple_target: bool) -> float:
    """Expected ``metric`` of uniform guessing on one item (see the module doc)."""
    if metric == "mc2" or multiple_target:
        return num_true / num_choices
    return 1.0 / num_choices


def at_chance(value: float, stderr: float, chance_level: float) -> bool:
    """Whether a measured ``value`` (with its standard error) is within two standard errors of chance: a
    model there cannot be told from uniform guessing, so the task cannot rank its sub-networks."""
    return abs(value - chance_level) <= 2.0 * stderr
