"""The search driver: :class:`Searcher` runs NSGA-II (pymoo) or the random-search baseline over the
integer genome, evaluating each generation as one batch and journaling every evaluation.

pymoo is imported inside :meth:`Searcher.run` only. The driver alone writes the run's files: ``run.json``
(on the first start), the journal (:class:`~toolkit.search.evaluations.EvaluationJournal`) and, at the
end, ``pareto.json`` (:func:`~toolkit.search.pareto.write_pareto`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.fileio import atomic_write_json
from toolkit.search.evaluations import Evaluation, EvaluationJournal
from toolkit.search.executors.base import Outcome
from toolkit.search.executors.local import LocalExecutor
from toolkit.search.pareto import SearchResult, pareto_front, summarise, to_minimisation, write_pareto
from toolkit.search.settings import SEARCH_VERSION, SearchSettings, check_same_split, read_run_record, run_split
from toolkit.space import SearchSpace, SubnetConfig

# accuracy_fn(cfg) -> {"accuracy": float, "accuracy_stderr": float, ...}
AccuracyFn = Callable[[SubnetConfig], Mapping[str, float]]
# predict_fn(cfg) -> {"decode_tokens_per_s", "prefill_ms", "peak_mem_bytes", "params", ...}
PredictFn = Callable[[SubnetConfig], Mapping[str, float]]


@dataclass
class _Pending:
    """A candidate of :meth:`Searcher.evaluate_many` not journaled yet."""

    cfg: SubnetConfig
    key: str
    metrics: dict[str, float] = field(default_factory=dict)
    violation: float = 0.0
    error: str | None = None
    needs_accuracy: bool = False
    predict_seconds: float = 0.0
    outcome: Outcome | None = None  # of the accuracy job, once it is done
    evaluation: Evaluation | None = None

    @property
    def ready(self) -> bool:
        """Whether its record can be written (its accuracy job is done, or it has none)."""
        return self.outcome is not None or not self.needs_accuracy


class Searcher:
    """Runs one search into a run directory (journal + outputs)."""

    def __init__(self, space: SearchSpace, settings: SearchSettings, accuracy_fn: AccuracyFn | None, predict_fn: PredictFn,
                 run_dir: str | Path, meta: Mapping[str, Any] | None = None, resume: bool = False,
                 on_progress: Callable[[dict[str, Any]], None] | None = None, executor=None,
                 known: Mapping[str, Mapping[str, float]] | None = None):
        """``accuracy_fn`` runs in this process; or pass ``executor`` (:mod:`toolkit.search.executors`, e.g. a
        Ray pool whose workers build the accuracy function themselves) and ``accuracy_fn=None``.
        The executor is not started or closed here: its owner does that. ``known`` maps a config key to
        accuracy metrics measured before the search (the chance guard's parent): used, not re-graded."""
        if (accuracy_fn is None) == (executor is None):
            raise TypeError("Searcher needs exactly one of accuracy_fn and executor")
        self.space = space
        self.settings = settings
        self.executor = executor if executor is not None else LocalExecutor(fn=accuracy_fn)
        self._generations = 0
        self._last_tick = time.monotonic()
        self.predict_fn = predict_fn
        self.run_dir = Path(run_dir)
        self.meta = dict(meta or {})
        self.on_progress = on_progress
        self._open_run_dir(resume)
        self.journal = EvaluationJournal(self.run_dir / "evaluations.jsonl")
        self.new_evaluations = 0
        self._visited: set[str] = set()  # keys reached in this (possibly replayed) trajectory
        self._parent_key = space.largest().key()
        self._known = {k: dict(v) for k, v in (known or {}).items()}

    # -- run directory ----------------------------------------------------------------------------
    def _run_record(self) -> dict[str, Any]:
        return {"version": SEARCH_VERSION, "settings": self.settings.to_dict(), "space": self.space.to_dict(), "meta": self.meta}

    def _open_run_dir(self, resume: bool) -> None:
        """Write ``run.json`` for a new run; for a resumed one, check it was this search."""
        run_json = self.run_dir / "run.json"
        record = self._run_record()
        if run_json.exists():
            if not resume:
                raise UserError(f"{self.run_dir}: a search already lives here; pass --resume to continue it or choose another --out")
            old = read_run_record(self.run_dir)
            for part in ("settings", "space"):
                if old.get(part) != record[part]:
                    raise UserError(f"{run_json}: {part}: differs from this invocation; resume with the original arguments")
            for k in ("model_hash", "task", "limit", "predictor", "eval_dtype", "metric"):
                if k in old.get("meta", {}) and old["meta"].get(k) != record["meta"].get(k):
                    raise UserError(f"{run_json}: meta.{k}: was {old['meta'].get(k)!r}, now {record['meta'].get(k)!r}")
            check_same_split(run_json, old.get("meta", {}), run_split(record["meta"]))
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_json, record)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, cfg: SubnetConfig) -> Evaluation:
        """Evaluate one sub-network, or replay its evaluation from the journal (one-item :meth:`evaluate_many`).

        Input: ``cfg``, a config of this search's space (the genome decoder makes them; not re-checked).

        Returns its :class:`Evaluation`. ``metrics`` holds the predictor's figures (``predict_fn``, on the
        driver) and, when measured, ``accuracy``, ``accuracy_stderr`` and what else the accuracy function
        returns (``accuracy_fn`` or a worker of the executor; for a key in ``known``, those metrics).
        ``feasible`` is false with ``violation > 0`` when a constraint is broken (predicted peak memory
        over the budget, predicted params over ``max_params``, accuracy under ``min_accuracy``), and false
        with ``error`` (``"TypeName: message"``, ``violation >= 1``) when predicting or grading raised.
        Accuracy is not measured, and ``metrics`` has no ``accuracy``, when the prediction failed or broke
        a constraint, except for the parent (the reference results are read against).

        Side effects: a key not journaled yet is appended to ``run_dir/evaluations.jsonl`` as one line,
        fsynced before this returns (its ``index`` is the number of lines before it); ``new_evaluations``
        grows by one; ``on_progress`` may be called. A key already journaled is returned from the journal:
        nothing is graded or written. Either way the key counts toward the ``evals`` budget. Nothing else
        is written (``pareto.json`` is written by :meth:`finish`).

        Raises :class:`UserError` when the predictor or the accuracy function raises one (bad input, the
        same for every candidate): nothing is journaled for ``cfg``. Any other exception is recorded in
        the evaluation, never raised.
        """
        return self.evaluate_many([cfg])[0]

    def evaluate_many(self, cfgs: Sequence[SubnetConfig]) -> list[Evaluation]:
        """The :class:`Evaluation` of every config, in order (a generation, told to pymoo together).

        Contract: a config whose key is journaled is replayed, never re-evaluated; a key repeated in
        ``cfgs`` is evaluated once. Predictions and predicted constraints are computed here, on the
        driver; the accuracy jobs go to the executor (in this process, or fanned out to Ray workers),
        and the new records are journaled in the order of ``cfgs``, so the journal (indices included),
        the trajectory and the front are the serial run's whatever the executor. A candidate whose
        evaluation raises is recorded with the error (infeasible); a :class:`UserError` stops the search
        (what came before it in ``cfgs`` is journaled)."""
        s = self.settings
        slots: list[Any] = []  # per cfg: an Evaluation, a key of an earlier slot, or a _Pending
        pending: dict[str, _Pending] = {}
        for cfg in cfgs:
            key = cfg.key()
            self._visited.add(key)
            cached = self.journal.get(key)
            if cached is not None:
                slots.append(cached)
                continue
            if key in pending:
                slots.append(key)
                continue
            p, t0 = _Pending(cfg, key), time.perf_counter()
            try:
                p.metrics.update({k: float(v) for k, v in self.predict_fn(cfg).items()})
                if s.memory_budget_bytes is not None:
                    p.violation += max(0.0, p.metrics["peak_mem_bytes"] / s.memory_budget_bytes - 1.0)
                if s.max_params is not None:
                    p.violation += max(0.0, p.metrics["params"] / s.max_params - 1.0)
            except (KeyboardInterrupt, SystemExit, UserError):
                raise
            except Exception as exc:
                p.error = f"{type(exc).__name__}: {exc}"
                p.violation = max(p.violation, 1.0)
            # The parent is the reference every result is read against (report, export's fastest-within),
            # so its accuracy is measured even when it is over the constraints.
            p.needs_accuracy = p.error is None and (p.violation == 0.0 or key == self._parent_key)
            p.predict_seconds = time.perf_counter() - t0
            if p.needs_accuracy and key in self._known:
                p.outcome = Outcome("ok", value=dict(self._known[key]), worker={"measured": "before the search"})
            pending[key] = p
            slots.append(p)
        jobs = [p for p in pending.values() if p.needs_accuracy and p.outcome is None]
        if self.executor.parallel:  # longest first: a generation ends when its slowest job does
            jobs.sort(key=lambda p: -p.metrics.get("params", 0.0))
        order = [p for p in slots if isinstance(p, _Pending)]
        cursor = 0

        def flush() -> None:  # journal, in cfgs' order, every record whose predecessors are all done
            nonlocal cursor
            ready = []
            while cursor < len(order) and order[cursor].ready:
                ready.append(self._record(order[cursor], len(self.journal) + len(ready)))
                cursor += 1
            if ready:
                self.journal.append_many(ready)
                self.new_evaluations += len(ready)
                self._report_progress_throttled()

        flush()
        if jobs:
            stream = self.executor.imap_unordered([p.cfg for p in jobs])
            try:
                for j, out in stream:
                    p = jobs[j]
                    if out.status == "user_error":
                        order[:] = order[:order.index(p)]  # journal what finished before it, then stop
                        flush()
                        raise out.exception if out.exception is not None else UserError(out.error)
                    p.outcome = out
                    flush()
            finally:
                stream.close()  # a generator: ends the executor's loop if we stopped early
        by_key = {p.key: p.evaluation for p in order}
        return [slot if isinstance(slot, Evaluation) else by_key[slot.key if isinstance(slot, _Pending) else slot]
                for slot in slots]

    @property
    def retries(self) -> int:
        """Evaluations re-queued because their worker died (the executor's count)."""
        return self.executor.retries

    def _record(self, p: "_Pending", index: int) -> Evaluation:
        """The journal record of a finished candidate (as the serial path always wrote it)."""
        s = self.settings
        metrics, violation, error, seconds = dict(p.metrics), p.violation, p.error, p.predict_seconds
        out = p.outcome
        if out is not None:
            seconds += out.seconds
            if not out.ok:
                error, violation = out.error, max(violation, 1.0)
            else:
                try:
                    metrics.update({k: float(v) for k, v in out.value.items()})
                    if s.min_accuracy is not None:
                        violation += max(0.0, s.min_accuracy - metrics["accuracy"])
                except Exception as exc:  # a value that is not metrics: that candidate's error, as serially
                    error, violation = f"{type(exc).__name__}: {exc}", max(violation, 1.0)
        # No "accuracy" when it was not measured (the journal once wrote 0.0 there, which read as a result).
        ev = Evaluation(index, p.key, p.cfg, metrics, feasible=violation == 0.0 and error is None,
                        violation=violation, error=error, seconds=seconds)
        p.evaluation = ev
        return ev

    def _report_progress_throttled(self) -> None:
        """Progress between generations (a generation of slow evaluations is long), at most 2 per second."""
        now = time.monotonic()
        if self.on_progress is not None and now - self._last_tick >= 0.5:
            self._last_tick = now
            self._report_progress(self._generations)

    def _budget_left(self) -> bool:
        return len(self._visited) < self.settings.evals

    def _report_progress(self, generation: int) -> None:
        """Tell ``on_progress`` where the search is: ``generation`` batches evaluated so far (NSGA-II's
        generations; the random search's chunks), the journaled evaluations, the front, the best accuracy."""
        if self.on_progress is None:
            return
        # mid-generation, keys of the batch may not be journaled yet: report what is
        evals = [self.journal.records[k] for k in self._visited if k in self.journal.records]
        front = pareto_front(evals, self.settings.objectives)
        self.on_progress({"generation": generation, "evaluations": len(evals), "front": len(front),
                          "best_accuracy": max((e.metrics["accuracy"] for e in evals if e.feasible), default=0.0)})

    # -- algorithms -------------------------------------------------------------------------------
    def initial_genomes(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The parent, the smallest sub-network, then seeded random genomes."""
        lo, hi = self.space.genome_bounds()
        X = [self.space.encode(self.space.largest()), self.space.encode(self.space.smallest())]
        while len(X) < n:
            X.append(rng.integers(lo, hi + 1))
        return np.stack(X[:n])

    def run(self) -> SearchResult:
        if self.settings.algorithm == "random":
            self._run_random()
        else:
            self._run_nsga2()
        return self.finish()

    def _run_random(self) -> None:
        """Seeded uniform draws until ``evals`` distinct sub-networks (the parent and the smallest first).
        The draws of a chunk are made before it is evaluated (so a chunk fans out), exactly as the serial
        loop would make them: the same rng sequence, stopping at the same draw."""
        rng = np.random.default_rng(self.settings.seed)
        lo, hi = self.space.genome_bounds()
        chunk = [self.space.decode(g) for g in self.initial_genomes(rng, 2)]
        keys = set(self._visited) | {c.key() for c in chunk}
        while True:
            while len(keys) < self.settings.evals and len(chunk) < max(10, self.settings.population):
                cfg = self.space.decode(rng.integers(lo, hi + 1))
                chunk.append(cfg)
                keys.add(cfg.key())
            if not chunk:
                break
            self.evaluate_many(chunk)
            chunk = []
            self._generations += 1  # a chunk is the random search's generation
            self._report_progress(self._generations)
            if len(keys) >= self.settings.evals:
                break

    def _run_nsga2(self) -> None:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.operators.crossover.sbx import SBX
        from pymoo.operators.mutation.pm import PM
        from pymoo.operators.repair.rounding import RoundingRepair
        from pymoo.termination.max_gen import MaximumGenerationTermination

        s = self.settings
        space = self.space
        lo, hi = space.genome_bounds()
        objectives = s.objectives
        searcher = self

        class SubnetProblem(Problem):
            def __init__(self):
                super().__init__(n_var=space.genome_length, n_obj=len(objectives), n_ieq_constr=1,
                                 xl=lo, xu=hi, vtype=int)

            def _evaluate(self, X, out, *args, **kwargs):
                F, G = [], []
                evs = searcher.evaluate_many([space.decode(x) for x in np.asarray(X).round().astype(np.int64)])
                for ev in evs:
                    f = to_minimisation(ev, objectives)
                    F.append(np.where(np.isfinite(f), f, 0.0))
                    G.append([ev.violation if not ev.feasible else -1e-9])
                out["F"] = np.array(F)
                out["G"] = np.array(G)

        rng = np.random.default_rng(s.seed)
        algorithm = NSGA2(
            pop_size=s.population,
            sampling=self.initial_genomes(rng, s.population),
            crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
            mutation=PM(prob=1.0, eta=5, vtype=float, repair=RoundingRepair()),  # low eta: short integer genes must move
            eliminate_duplicates=True,
        )
        algorithm.setup(SubnetProblem(), termination=MaximumGenerationTermination(10**9), seed=s.seed, verbose=False)
        while self._budget_left():
            algorithm.next()
            self._generations += 1
            self._report_progress(self._generations)

    # -- outputs ----------------------------------------------------------------------------------
    def finish(self) -> SearchResult:
        """The run's result (its evaluations, front, hypervolume and parent), written to ``pareto.json``."""
        evals = sorted((self.journal.records[k] for k in self._visited), key=lambda e: e.index)
        result = summarise(evals, self.space, self.settings.objectives)
        write_pareto(self.run_dir, result, self.settings.objectives, self._run_record())
        return result
