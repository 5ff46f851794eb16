"""NSGA-II over sub-networks (pymoo), resumable, with a journal; random search as the baseline.

This is the only module that imports pymoo. Objectives declare their direction (``higher_is_better``);
only here is that turned into pymoo's minimisation.

**Journal and resume.** Every evaluated sub-network is appended to ``run/evaluations.jsonl`` and
fsynced *before* it counts. Evaluations are cached by the sub-network's key (a config hash), so a
sub-network is never evaluated twice. ``--resume`` re-runs the algorithm from the start with the same
seed and replays journaled evaluations from the cache: NSGA-II is deterministic given its seed and the
objective values, so the resumed run follows the uninterrupted run's trajectory exactly, evaluating
only what the journal does not have yet. A line cut off by a kill is dropped (it never counted).

**Executors.** A generation is evaluated as one batch (:meth:`Searcher.evaluate_many`): predictions
and constraints on the driver, accuracy jobs on an executor (:mod:`toolkit.search.executors`: in this process,
or Ray workers that each load the model once, see :mod:`toolkit.search.workers`), records journaled in
the batch's order by the driver alone. Journal, trajectory and front are therefore the same whatever the
executor and however many workers; a worker lost mid-evaluation has its candidate re-queued
(``Searcher.retries``).

**Budget.** ``evals`` counts distinct sub-networks. The search stops at the first generation boundary
at or after the budget, so a run may overshoot by less than one population.

**Constraints.** Predicted peak memory must fit the profile's usable memory; optionally a minimum
accuracy and a maximum parameter count. A candidate that violates a *predicted* constraint is recorded
as infeasible without measuring its accuracy (it costs nothing; its record has no ``accuracy``), except
the parent: it is the reference results are read against, so its accuracy is always measured
(``pareto.json``: ``parent.accuracy_measured``). A candidate whose evaluation raises is recorded with the
error, made infeasible, and the search goes on; a :class:`UserError` (bad input, the same for every
candidate) stops it instead. ``pareto.json`` counts the feasible candidates (``feasible_count``): 0 means
the front is empty, and ``toolkit search`` exits 3.

**Which examples.** ``toolkit search`` grades candidates on the task's *search* part only
(:meth:`toolkit.tasks.TaskData.split`); the front's accuracies are selected on, so they are optimistic, and
numbers to report come from the disjoint *report* part (``toolkit eval --split report``). ``run.json``
records the part in ``meta.split`` (runs from before it: all examples), a resume on another part is
refused, and ``pareto.json`` says which part its accuracies are on (``split``, ``limit``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_write_json, atomic_write_text
from toolkit.space import SearchSpace, SubnetConfig

SEARCH_VERSION = 1


@dataclass(frozen=True)
class Objective:
    name: str  # key in an evaluation record's ``metrics``
    higher_is_better: bool
    label: str


OBJECTIVES = {
    "accuracy": Objective("accuracy", True, "task accuracy"),
    "decode_tokens_per_s": Objective("decode_tokens_per_s", True, "predicted decode tokens/s"),
    "prefill_ms": Objective("prefill_ms", False, "predicted prefill latency (ms)"),
    "params": Objective("params", False, "parameters"),
    "peak_mem_bytes": Objective("peak_mem_bytes", False, "predicted peak memory (bytes)"),
}


def axis_labels(objectives: Sequence[str]) -> dict[str, str]:
    """Each objective's axis label for a plot: what it is and, for the speed/size axis, its direction."""
    return {o: OBJECTIVES[o].label + ("" if i == 0 else (" (higher is better)" if OBJECTIVES[o].higher_is_better
                                                        else " (lower is better)"))
            for i, o in enumerate(objectives)}


@dataclass(frozen=True)
class SearchSettings:
    """Everything that determines a search's trajectory (checked on resume)."""

    objectives: tuple[str, ...] = ("accuracy", "decode_tokens_per_s")
    algorithm: str = "nsga2"  # or "random"
    evals: int = 100
    population: int = 50
    seed: int = 0
    memory_budget_bytes: float | None = None
    min_accuracy: float | None = None
    max_params: float | None = None
    version: int = SEARCH_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", tuple(self.objectives))
        if len(self.objectives) < 2 or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError("objectives", "need at least two distinct objectives")
        for o in self.objectives:
            if o not in OBJECTIVES:
                raise ConfigError("objectives", f"unknown objective {o!r} (known: {', '.join(OBJECTIVES)})")
        if "accuracy" not in self.objectives:
            raise ConfigError("objectives", "accuracy must be one of the objectives")
        if self.algorithm not in ("nsga2", "random"):
            raise ConfigError("algorithm", f"unknown algorithm {self.algorithm!r} (nsga2 or random)")
        for name in ("evals", "population", "seed", "version"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(name, f"expected an integer, got {v!r}")
        if self.evals < 2:
            raise ConfigError("evals", f"need at least 2 evaluations, got {self.evals}")
        if self.population < 4:
            raise ConfigError("population", f"need a population of at least 4, got {self.population}")
        if self.seed < 0:
            raise ConfigError("seed", f"must be a non-negative integer, got {self.seed}")  # numpy refuses negatives
        for name in ("memory_budget_bytes", "min_accuracy", "max_params"):
            v = getattr(self, name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
                raise ConfigError(name, f"expected a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        # A non-positive budget would silently turn its constraint off (or make everything infeasible).
        if self.memory_budget_bytes is not None and self.memory_budget_bytes <= 0:
            raise ConfigError("memory_budget_bytes", f"must be positive, got {self.memory_budget_bytes:g}")
        if self.max_params is not None and self.max_params <= 0:
            raise ConfigError("max_params", f"must be positive, got {self.max_params:g}")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ConfigError("min_accuracy", f"must be in [0, 1] (an accuracy, not a percentage), got {self.min_accuracy:g}")
        if self.version != SEARCH_VERSION:
            raise ConfigError("version", f"unsupported search settings version {self.version} (this toolkit writes {SEARCH_VERSION})")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objectives"] = list(self.objectives)
        return d


@dataclass
class Evaluation:
    """One journaled evaluation."""

    index: int
    key: str
    config: SubnetConfig
    metrics: dict[str, float]  # accuracy, accuracy_stderr, predicted figures, params
    feasible: bool
    violation: float = 0.0
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "key": self.key, "config": self.config.to_dict(), "metrics": self.metrics,
                "feasible": self.feasible, "violation": self.violation, "error": self.error,
                "seconds": round(self.seconds, 4)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], file: str | None = None, space: SearchSpace | None = None) -> "Evaluation":
        """Validate one journal record (every field's type; the config against ``space`` if given).

        Raises a :class:`ConfigError` naming the field (``file`` attributes it; the journal adds the line).
        """

        def bad(name: str, problem: str) -> ConfigError:
            return ConfigError(name, problem, file)

        def number(name: str, v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise bad(name, f"expected a number, got {v!r}")
            return float(v)

        if not isinstance(d, Mapping):
            raise bad("<root>", "expected a JSON object")
        unknown = set(d) - {"index", "key", "config", "metrics", "feasible", "violation", "error", "seconds"}
        if unknown:
            raise bad(sorted(unknown)[0], "unknown field")
        for name in ("index", "key", "config", "metrics", "feasible"):
            if name not in d:
                raise bad(name, "missing required field")
        index, key, feasible, error = d["index"], d["key"], d["feasible"], d.get("error")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise bad("index", f"expected a non-negative integer, got {index!r}")
        if not isinstance(feasible, bool):
            raise bad("feasible", f"expected true or false, got {feasible!r}")
        if error is not None and not isinstance(error, str):
            raise bad("error", f"expected a string or null, got {error!r}")
        if not isinstance(d["metrics"], Mapping):
            raise bad("metrics", f"expected an object of numbers, got {type(d['metrics']).__name__}")
        metrics = {str(k): number(f"metrics.{k}", v) for k, v in d["metrics"].items()}
        violation = number("violation", d.get("violation", 0.0))
        seconds = number("seconds", d.get("seconds", 0.0))
        if not violation >= 0 or not seconds >= 0:
            raise bad("violation" if not violation >= 0 else "seconds", "must be non-negative")
        if feasible and (violation > 0 or error is not None):
            raise bad("feasible", "true, but the record has a violation or an error")
        cfg = SubnetConfig.from_nested(d["config"], "config", file, space.validate if space is not None else None)
        if key != cfg.key():
            raise bad("key", f"{key!r} is not the key of its config ({cfg.key()!r})")
        return cls(index, key, cfg, metrics, feasible, violation, error, seconds)


class Journal:
    """The run's evaluations, on :class:`toolkit.search.journal.JournalFile` (fsynced lines, a torn last line dropped
    and truncated). No header line: ``run.json`` holds the settings. Each line is validated as an
    :class:`Evaluation`, its config against ``space`` (by default the space in ``run.json`` beside the
    journal, when there is one); a bad line or a key journaled twice is a one-line error naming the line.
    ``readonly``: read without touching the file (a torn last line is skipped, not truncated: it may be
    the line a live search is writing); what ``report`` and ``export`` use, via :func:`load_evaluations`.
    """

    def __init__(self, path: Path, space: SearchSpace | None = None, readonly: bool = False):
        from toolkit.search.journal import JournalFile, line_error

        self.path = Path(path)
        self._file = JournalFile(self.path, header=None, what="search journal", readonly=readonly)
        space = space if space is not None else self._space_beside(self.path)
        self.records: dict[str, Evaluation] = {}
        lines: dict[str, int] = {}
        for rec in self._file:
            try:
                ev = Evaluation.from_dict(rec, str(self.path), space)
            except ConfigError as exc:
                raise line_error(self.path, rec.line, exc.field, exc.problem) from None
            if ev.key in lines:
                raise line_error(self.path, rec.line, "key", f"{ev.key} was already journaled on line {lines[ev.key]} (corrupt journal)")
            self.records[ev.key] = ev
            lines[ev.key] = rec.line

    @staticmethod
    def _space_beside(path: Path) -> SearchSpace | None:
        """The space recorded in the ``run.json`` next to the journal (None if there is none to read:
        a missing or broken run.json is reported by whoever reads the run, not here)."""
        try:
            return SearchSpace.from_dict(json.loads((path.parent / "run.json").read_text(encoding="utf-8"))["space"])
        except (OSError, ValueError, KeyError, TypeError, UserError):
            return None

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> Evaluation | None:
        return self.records.get(key)

    def append(self, ev: Evaluation) -> None:
        self.append_many([ev])

    def append_many(self, evs: Sequence[Evaluation]) -> None:
        """Journal ``evs`` (consecutive lines, one fsync); a key journaled before is a bug, refused."""
        keys = [ev.key for ev in evs]
        if len(set(keys)) != len(keys) or any(k in self.records for k in keys):
            raise RuntimeError(f"journal: {next(k for k in keys if k in self.records or keys.count(k) > 1)} evaluated twice")
        self._file.append_many([ev.to_dict() for ev in evs])
        for ev in evs:
            self.records[ev.key] = ev


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``run.json``, checked enough to be used: a JSON object whose ``settings``,
    ``space`` and ``meta`` are objects and whose settings are valid :class:`SearchSettings`. A truncated,
    binary or hand-broken file is a one-line error naming the file (and the field)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no run.json (not a search run directory)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (not a run.json written by toolkit search)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                        "truncated or edited? (not a run.json written by toolkit search)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if not isinstance(record, dict):
        raise ConfigError("<root>", f"expected a JSON object, got {type(record).__name__}", str(path))
    for part in ("settings", "space", "meta"):
        if not isinstance(record.get(part, {} if part == "meta" else None), dict):
            raise ConfigError(part, "missing or not a JSON object", str(path))
    try:
        SearchSettings(**record["settings"])
    except ConfigError as exc:
        raise ConfigError(f"settings.{exc.field}", exc.problem, str(path)) from None
    except TypeError as exc:  # an unknown or missing field
        raise ConfigError("settings", f"not search settings ({exc})", str(path)) from None
    return record


def run_split(meta: Mapping[str, Any]) -> str:
    """The task part a run's accuracies were measured on (``meta.split``); runs journaled before the
    split existed have none and were graded on all examples."""
    return meta.get("split", "all")


def check_same_split(run_json: Path, old_meta: Mapping[str, Any], split: str) -> None:
    """Refuse to resume a run on another part of the task: its journaled accuracies would not compare."""
    was = run_split(old_meta)
    if was != split:
        why = " (runs made before --split existed were graded on all examples)" if "split" not in old_meta else ""
        raise UserError(f"{run_json}: meta.split: was {was!r}, now {split!r}; resume with --split {was}{why}")


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
    outcome: Any = None  # toolkit.search.executors.Outcome of the accuracy job, once it is done
    evaluation: Evaluation | None = None

    @property
    def ready(self) -> bool:
        """Whether its record can be written (its accuracy job is done, or it has none)."""
        return self.outcome is not None or not self.needs_accuracy


@dataclass
class SearchResult:
    evaluations: list[Evaluation]
    front: list[Evaluation]
    hypervolume: float
    history: list[dict[str, float]] = field(default_factory=list)


def to_minimisation(ev: Evaluation, objectives: Sequence[str]) -> np.ndarray:
    return np.array([(-1 if OBJECTIVES[o].higher_is_better else 1) * ev.metrics.get(o, np.nan) for o in objectives])


def pareto_front(evals: Sequence[Evaluation], objectives: Sequence[str]) -> list[Evaluation]:
    """Non-dominated feasible evaluations, sorted by the first objective (best first)."""
    feas = [e for e in evals if e.feasible]
    if not feas:
        return []
    F = np.stack([to_minimisation(e, objectives) for e in feas])
    keep = []
    for i in range(len(feas)):
        dominated = np.any(np.all(F <= F[i], axis=1) & np.any(F < F[i], axis=1))
        if not dominated:
            keep.append(i)
    front = [feas[i] for i in keep]
    return sorted(front, key=lambda e: (to_minimisation(e, objectives)[0], e.key))


def hypervolume(evals: Sequence[Evaluation], objectives: Sequence[str], reference: Mapping[str, float]) -> float:
    """Hypervolume of the feasible front in minimisation space, objectives scaled by ``reference``
    (the parent's values: accuracy and speed relative to the parent) with reference point 0 for
    higher-is-better objectives and 2x the reference for lower-is-better ones."""
    from pymoo.indicators.hv import HV

    front = pareto_front(evals, objectives)
    if not front:
        return 0.0
    scale = np.array([abs(reference[o]) or 1.0 for o in objectives])
    F = np.stack([to_minimisation(e, objectives) for e in front]) / scale
    ref = np.array([0.0 if OBJECTIVES[o].higher_is_better else 2.0 for o in objectives])
    F = F[np.all(F < ref, axis=1)]
    return float(HV(ref_point=ref)(F)) if len(F) else 0.0


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
        from toolkit.search.executors import LocalExecutor

        if (accuracy_fn is None) == (executor is None):
            raise TypeError("Searcher needs exactly one of accuracy_fn and executor")
        self.space = space
        self.settings = settings
        self.executor = executor if executor is not None else LocalExecutor(fn=accuracy_fn)
        self._generation = 0
        self._last_tick = time.monotonic()
        self.predict_fn = predict_fn
        self.run_dir = Path(run_dir)
        self.meta = dict(meta or {})
        self.on_progress = on_progress
        self._prepare(resume)
        self.journal = Journal(self.run_dir / "evaluations.jsonl")
        self.new_evaluations = 0
        self._visited: set[str] = set()  # keys reached in this (possibly replayed) trajectory
        self._parent_key = space.largest().key()
        self._known = {k: dict(v) for k, v in (known or {}).items()}

    # -- run directory ----------------------------------------------------------------------------
    def _run_record(self) -> dict[str, Any]:
        return {"version": SEARCH_VERSION, "settings": self.settings.to_dict(), "space": self.space.to_dict(), "meta": self.meta}

    def _prepare(self, resume: bool) -> None:
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
        """One candidate's :class:`Evaluation` (journaled, or replayed from the journal): see
        :meth:`evaluate_many`."""
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
                from toolkit.search.executors import Outcome

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
                self._tick()

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

    def _tick(self) -> None:
        """Progress between generations (a generation of slow evaluations is long), at most 2 per second."""
        now = time.monotonic()
        if self.on_progress is not None and now - self._last_tick >= 0.5:
            self._last_tick = now
            self._report(self._generation)

    def _budget_left(self) -> bool:
        return len(self._visited) < self.settings.evals

    def _report(self, generation: int) -> None:
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
        draws = 0
        while True:
            while len(keys) < self.settings.evals and len(chunk) < max(10, self.settings.population):
                cfg = self.space.decode(rng.integers(lo, hi + 1))
                chunk.append(cfg)
                keys.add(cfg.key())
                draws += 1
            if not chunk:
                break
            self.evaluate_many(chunk)
            chunk = []
            self._generation = draws
            self._report(draws)
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
            self._generation += 1
            self._report(self._generation)

    # -- outputs ----------------------------------------------------------------------------------
    def finish(self) -> SearchResult:
        evals = sorted((self.journal.records[k] for k in self._visited), key=lambda e: e.index)
        front, hv = render_run(self.run_dir, evals, self.space, self.settings.objectives, self._run_record())
        return SearchResult(evals, front, hv)


def render_run(run_dir: Path, evals: Sequence[Evaluation], space: SearchSpace, objectives: Sequence[str],
               record: Mapping[str, Any]) -> tuple[list[Evaluation], float]:
    """Front + hypervolume (relative to the parent) of a run's evaluations; writes the run's outputs."""
    front = pareto_front(evals, objectives)
    parent = next((e for e in evals if e.key == space.largest().key()), None)
    reference = {o: (parent.metrics.get(o, 1.0) if parent else 1.0) for o in objectives}
    hv = hypervolume(evals, objectives, reference)
    write_outputs(run_dir, evals, front, objectives, hv, parent, record)
    return front, hv


def accuracy_measured(ev: Evaluation | Mapping[str, Any]) -> bool:
    """Whether ``ev``'s accuracy was measured: an :class:`Evaluation`, or an entry as ``pareto.json``
    writes it (a boolean ``accuracy_measured`` flag there is the answer). Journals written before the
    parent was always measured recorded an unmeasured accuracy as 0.0 with no ``accuracy_stderr``
    beside it: that is not a result. The one definition (``toolkit report`` uses it too)."""
    if isinstance(ev, Evaluation):
        metrics, feasible, error = ev.metrics, ev.feasible, ev.error
    else:
        flag = ev.get("accuracy_measured")
        if isinstance(flag, bool):
            return flag
        metrics, feasible, error = ev.get("metrics") or {}, ev.get("feasible", True), ev.get("error")
    if error is not None or "accuracy" not in metrics:
        return False
    return bool(feasible) or metrics["accuracy"] != 0.0 or "accuracy_stderr" in metrics


def write_outputs(run_dir: Path, evals: Sequence[Evaluation], front: Sequence[Evaluation], objectives: Sequence[str],
                  hv: float, parent: Evaluation | None, record: Mapping[str, Any]) -> None:
    """pareto.json, evaluations.csv (and pareto.png if matplotlib is available)."""
    meta = record.get("meta", {})
    pareto = {
        "version": SEARCH_VERSION,
        "model": meta.get("model"),
        "model_hash": meta.get("model_hash"),
        "profile": meta.get("profile"),
        "profile_file": meta.get("profile_file"),
        "task": meta.get("task"),
        # Which examples the accuracies are on: the search part, selected on (optimistic for the front's
        # winners; re-measure them with `toolkit eval --split report`), or all of them in older runs.
        "split": run_split(meta),
        "limit": meta.get("limit"),
        "metric": meta.get("metric", "acc"),  # what "accuracy" is: the task's acc, acc_norm or mc2
        "objectives": [{"name": o, "higher_is_better": OBJECTIVES[o].higher_is_better} for o in objectives],
        "settings": record.get("settings"),
        "evaluations": len(evals),
        # 0 feasible: every candidate broke a constraint or failed (the front is empty; `toolkit search`
        # says so and exits 3).
        "feasible_count": sum(e.feasible for e in evals),
        "error_count": sum(e.error is not None for e in evals),
        "hypervolume": hv,
        # The parent is the reference: "accuracy_measured" says whether metrics.accuracy is a result
        # (false only when its evaluation failed, or in runs journaled before it was always measured).
        "parent": {**parent.to_dict(), "accuracy_measured": accuracy_measured(parent)} if parent else None,
        "front": [{**e.to_dict(), "objectives": {o: e.metrics.get(o) for o in objectives}} for e in front],
    }
    atomic_write_json(run_dir / "pareto.json", pareto)
    buf = io.StringIO()
    metric_keys = sorted({k for e in evals for k in e.metrics})
    w = csv.writer(buf)
    w.writerow(["index", "key", "feasible", "violation", "error", "depth", "mean_mlp", "mean_heads", *metric_keys, "on_front"])
    front_keys = {e.key for e in front}
    for e in evals:
        w.writerow([e.index, e.key, e.feasible, e.violation, e.error or "", e.config.depth,
                    float(np.mean(e.config.mlp)), float(np.mean(e.config.heads)),
                    *[e.metrics.get(k, "") for k in metric_keys], e.key in front_keys])
    atomic_write_text(run_dir / "evaluations.csv", buf.getvalue())
    try:
        from toolkit.report import plot_pareto
    except ImportError:  # pragma: no cover - report needs matplotlib
        return
    plot_pareto(run_dir / "pareto.png", evals, front, objectives, parent, labels=axis_labels(objectives))


def load_evaluations(run_dir: str | Path) -> list[Evaluation]:
    """A run's complete evaluations, by index. Read-only: the journal is left byte-identical (a torn
    last line is skipped, not truncated), so this is safe beside a search that is still writing it."""
    path = Path(run_dir) / "evaluations.jsonl"
    if not path.exists():
        raise UserError(f"{run_dir}: no evaluations.jsonl (not a search run directory)")
    return sorted(Journal(path, readonly=True).records.values(), key=lambda e: e.index)
