"""Results with lm-eval's metrics: per example (:class:`ExampleResult`), per task (:class:`TaskResult`), and
:func:`evaluate_task`, which scores a task's examples and builds them.

Each choice's score is the sum of ``log P(continuation | context)`` over its tokens (requests from
:mod:`toolkit.evaluate.tokenization`, scored by a :class:`~toolkit.evaluate.scorers.Scorer`). ``acc`` =
argmax of the sums; ``acc_norm`` = argmax of sum / ``Example.norm_lengths`` (lm-eval's character length of
the choice, see :mod:`toolkit.tasks`); ties go to the first choice (``np.argmax``); standard errors are
lm-eval's ``mean_stderr`` (sample standard deviation / sqrt(n)). With several gold choices (an lm-eval
YAML's list target) the prediction counts when it is any of them; ``mc2``, for examples that carry
``labels``, is the probability mass on the true answers (:mod:`toolkit.tasks.metrics`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.evaluate.engine import DEFAULT_BATCH_TOKENS
from toolkit.evaluate.scorers import as_scorer
from toolkit.evaluate.tokenization import LmEvalTokenizer, encode_examples
from toolkit.tasks import PARTS, Example, Task, TaskData, get_task, load_task
from toolkit.tasks.metrics import METRICS, mc2 as mc2_score

EVAL_VERSION = 1


@dataclass(frozen=True)
class ExampleResult:
    id: str
    label: int
    loglikelihoods: tuple[float, ...]
    pred: int
    pred_norm: int
    truncated: bool = False  # a context lost its left end to the model's max length (as in lm-eval)
    golds: tuple[int, ...] = ()  # every true choice when there are several (Example.golds)
    multiple_target: bool = False  # acc / acc_norm count any of golds (an lm-eval YAML's list target)

    def score(self, metric: str) -> float:
        """This example's ``metric``: 0/1 for ``acc`` / ``acc_norm``, the true answers' probability mass for
        ``mc2`` (see :mod:`toolkit.tasks.metrics`)."""
        if metric == "mc2":
            if not self.golds:
                raise ValueError(f"example {self.id}: mc2 needs several true answers (labels)")
            return mc2_score(self.loglikelihoods, self.golds)
        if metric not in ("acc", "acc_norm"):
            raise ValueError(f"unknown metric {metric!r}")
        pred = self.pred if metric == "acc" else self.pred_norm
        return float(pred in self.golds if self.multiple_target else pred == self.label)

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "label": self.label, "loglikelihoods": list(self.loglikelihoods),
             "pred": self.pred, "pred_norm": self.pred_norm, "truncated": self.truncated}
        if self.golds:
            d["golds"] = list(self.golds)
            d["multiple_target"] = self.multiple_target
        return d


@dataclass(frozen=True)
class TaskResult:
    """Accuracy of a model on a task (or a seeded subset of it), with lm-eval's metrics."""

    task: str
    n: int
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    seconds: float  # wall time
    metrics: tuple[str, ...]  # the metrics lm-eval reports for this task
    higher_is_better: dict[str, bool]
    num_fewshot: int = 0
    limit: int | None = None
    seed: int = 0
    split: str = "all"  # the task's part the examples come from (toolkit.tasks: "search", "report", "all")
    tokens_forward: int = 0  # tokens the engine computed (shared prefixes once)
    cpu_seconds: float = 0.0  # process CPU time (all threads): the work, whatever else shares the cores
    truncated_examples: int = 0  # examples whose context was cut from the left to the model's max length
    per_example: tuple[ExampleResult, ...] = field(default=(), repr=False)
    engine: str = "torch"  # what scored the requests (toolkit.engines: "torch", "llama.cpp")
    mc2: float | None = None  # for tasks whose examples carry several true answers (labels)
    mc2_stderr: float | None = None
    chance: dict[str, float] = field(default_factory=dict)  # metric -> expected value of uniform guessing
    version: int = EVAL_VERSION

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError("TaskResult: n must be positive")
        for name in ("acc", "acc_norm", "mc2"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"TaskResult: {name} must be in [0, 1], got {v}")
        if self.split not in PARTS:
            raise ValueError(f"TaskResult: split must be one of {', '.join(PARTS)}, got {self.split!r}")
        from toolkit.engines import ENGINES

        if self.engine not in ENGINES:
            raise ValueError(f"TaskResult: engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    def value(self, metric: str) -> float:
        """The mean of ``metric`` ("acc", "acc_norm" or "mc2") over the examples."""
        v = getattr(self, metric, None) if metric in METRICS else None
        if v is None:
            raise UserError(f"task {self.task}: metric {metric!r} was not measured (it has "
                            f"{', '.join(m for m in METRICS if getattr(self, m) is not None)})")
        return float(v)

    def stderr(self, metric: str) -> float:
        self.value(metric)
        return float(getattr(self, f"{metric}_stderr"))

    def to_dict(self, per_example: bool = False) -> dict[str, Any]:
        d = {
            "version": self.version, "task": self.task, "n": self.n, "num_fewshot": self.num_fewshot,
            "limit": self.limit, "seed": self.seed, "split": self.split, "acc": self.acc, "acc_stderr": self.acc_stderr,
            "acc_norm": self.acc_norm, "acc_norm_stderr": self.acc_norm_stderr, "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds, "tokens_forward": self.tokens_forward,
            "truncated_examples": self.truncated_examples, "engine": self.engine, "metrics": list(self.metrics),
            "higher_is_better": dict(self.higher_is_better), "chance": dict(self.chance),
        }
        if self.mc2 is not None:
            d["mc2"], d["mc2_stderr"] = self.mc2, self.mc2_stderr
        if per_example:
            d["per_example"] = [e.to_dict() for e in self.per_example]
        return d


def mean_stderr(values: Sequence[float]) -> float:
    """lm-eval's ``mean_stderr``: sample standard deviation / sqrt(n) (0 for a single value)."""
    n = len(values)
    if n < 2:
        return 0.0
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))


def score_examples(model, tokenizer, examples: Sequence[Example], add_bos_token: bool | None = None,
                   max_batch_tokens: int = DEFAULT_BATCH_TOKENS, on_batch: Callable[[int], None] | None = None,
                   file: str | os.PathLike | None = None) -> tuple[list[ExampleResult], int]:
    """Per-example log-likelihoods and predictions (acc and acc_norm) for a list of examples.

    ``model`` is a PyTorch model (scored by :class:`TorchScorer` with ``max_batch_tokens``) or any
    :class:`Scorer` (e.g. :class:`LlamaCppScorer`): requests and metrics are the same for every engine."""
    scorer = as_scorer(model, max_batch_tokens)
    enc = LmEvalTokenizer(tokenizer, add_bos_token, scorer.max_length)
    encoded, owners, truncated = encode_examples(enc, examples, file)
    lls, tokens = scorer.score(encoded, owners, on_batch=on_batch)
    results, k = [], 0
    for ex, cut in zip(examples, truncated):
        ll = lls[k:k + ex.num_choices]
        k += ex.num_choices
        norm = ll / np.asarray(ex.norm_lengths, dtype=np.float64)
        results.append(ExampleResult(ex.id, ex.label, tuple(float(v) for v in ll), int(np.argmax(ll)),
                                     int(np.argmax(norm)), cut, ex.golds, ex.multiple_target))
    return results, tokens


def evaluate_task(
    model,
    tokenizer,
    task: Task | TaskData | str,
    limit: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    num_fewshot: int | None = None,
    add_bos_token: bool | None = None,
    max_batch_tokens: int = DEFAULT_BATCH_TOKENS,
    progress: bool = True,
    split: str = "all",
) -> TaskResult:
    """Evaluate a model on a multiple-choice task: lm-eval's acc / acc_norm and their standard errors.

    ``task`` is a registered name, a :class:`Task`, or already-loaded :class:`TaskData`. ``limit`` takes a
    fixed seeded subset (the same ``limit`` and ``seed`` give the same examples; use it inside the search),
    ``None`` the full set. ``split`` takes the task's "search" or "report" part first (see
    :mod:`toolkit.tasks`: the search selects on its part, reports are measured on the other); "all" keeps
    ``task`` as it is (already-split :class:`TaskData` stays its part). ``TaskResult.split`` records it.
    ``model`` is a PyTorch model or a :class:`Scorer` (``TaskResult.engine`` records which engine scored).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    if isinstance(task, TaskData):
        data = task
    else:
        if data_dir is None:
            from toolkit.fileio import data_dir as default_data_dir

            data_dir = default_data_dir(None)
        data = load_task(get_task(task, data_dir) if isinstance(task, str) else task, data_dir, num_fewshot)
    if split != "all":  # "all": the data as given (a part already taken stays that part)
        data = data.split(split)
    data = data.select(limit, seed)
    examples = data.examples
    scorer = as_scorer(model, max_batch_tokens)
    if progress:
        from toolkit.progress import progress_bar

        with progress_bar(transient=True) as bar:
            tid = bar.add_task(f"eval {data.task.name}", total=sum(e.num_choices for e in examples), info="")
            per, tokens = score_examples(scorer, tokenizer, examples, add_bos_token,
                                         on_batch=lambda n: bar.advance(tid, n), file=data.file)
    else:
        per, tokens = score_examples(scorer, tokenizer, examples, add_bos_token, file=data.file)
    acc = [r.score("acc") for r in per]
    acc_norm = [r.score("acc_norm") for r in per]
    mc2s = [r.score("mc2") for r in per] if all(r.golds for r in per) else None
    return TaskResult(
        task=data.task.name, n=len(per), acc=float(np.mean(acc)), acc_stderr=mean_stderr(acc),
        acc_norm=float(np.mean(acc_norm)), acc_norm_stderr=mean_stderr(acc_norm),
        mc2=None if mc2s is None else float(np.mean(mc2s)), mc2_stderr=None if mc2s is None else mean_stderr(mc2s),
        chance={m: data.chance(m) for m in METRICS if m != "mc2" or mc2s is not None},
        seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0, metrics=data.task.metrics,
        higher_is_better=dict(data.task.higher_is_better), num_fewshot=data.num_fewshot, limit=limit, seed=seed,
        split=data.part, tokens_forward=tokens, truncated_examples=sum(r.truncated for r in per), per_example=tuple(per),
        engine=scorer.engine,
    )
