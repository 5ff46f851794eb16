"""The search's accuracy worker: what grades one candidate, in this process or in a Ray worker.

:func:`accuracy_fn` is the one grading function (extract the sub-network by config from the loaded
parent, score the task's fixed subset). :class:`AccuracyWorker` is its picklable factory for
:mod:`toolkit.search.executors`: a worker calls it once, loads the parent there (checking it is the driver's
model, by hash), and then grades any number of candidates without reloading. The task's examples and
the importance ordering travel with the factory, so a worker needs only the model on its node (the
embedded default comes with the package; a folder or GGUF must be at the same absolute path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


def accuracy_fn(loaded, importance, task_data, limit: int | None, seed: int, threads: int,
                metric: str = "acc") -> Callable[[Any], Mapping[str, float]]:
    """``cfg -> {"accuracy", "accuracy_stderr", "acc_norm"}`` on ``task_data``'s seeded ``limit`` subset;
    ``accuracy`` is the task's ``metric`` ("acc", "acc_norm" or "mc2")."""
    from toolkit.elastic import extract
    from toolkit.evaluate import evaluate_task
    from toolkit.measure import torch_threads

    def accuracy(cfg) -> Mapping[str, float]:
        child = extract(loaded.model, cfg, importance)
        with torch_threads(threads):
            r = evaluate_task(child, loaded.tokenizer, task_data, limit=limit, seed=seed, progress=False)
        return {"accuracy": r.value(metric), "accuracy_stderr": r.stderr(metric), "acc_norm": r.acc_norm}

    return accuracy


@dataclass(frozen=True)
class AccuracyWorker:
    """Factory of :func:`accuracy_fn` in a worker process (see the module doc)."""

    model: str  # the embedded default's name, or an absolute path
    model_hash: str
    dtype: str
    device: str
    importance: Any  # toolkit.importance.Importance
    task_data: Any  # toolkit.tasks.TaskData: the part candidates are graded on
    limit: int | None
    seed: int
    threads: int
    worker_gpus: float = 0.0
    metric: str = "acc"

    def __call__(self) -> Callable[[Any], Mapping[str, float]]:
        from toolkit.search.executors import load_model_on_worker

        loaded = load_model_on_worker(self.model, self.model_hash, self.dtype, self.device, self.worker_gpus)
        return accuracy_fn(loaded, self.importance, self.task_data, self.limit, self.seed, self.threads, self.metric)
