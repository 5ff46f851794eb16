"""The front of a run and what it is worth: the Pareto filter, the hypervolume, and ``pareto.json``.

Objectives declare their direction (:data:`toolkit.search.settings.OBJECTIVES`); :func:`to_minimisation`
is the one place that turns them into pymoo's minimisation. pymoo is imported inside the functions
that need it, never at import.

``pareto.json`` (:func:`write_pareto`) is the search's output for the next stage (export). Its paths
(``model`` when the model is a folder or file, ``profile_file``) are relative to the folder that holds
it, so a run folder can be moved or copied whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.fileio import atomic_write_json
from toolkit.search.evaluations import Evaluation, accuracy_measured
from toolkit.search.settings import OBJECTIVES, SEARCH_VERSION, run_split
from toolkit.space import SearchSpace


@dataclass
class SearchResult:
    """A run's evaluations (by index), its front (best first objective first), hypervolume and parent."""

    evaluations: list[Evaluation]
    front: list[Evaluation]
    hypervolume: float
    parent: Evaluation | None = None


def to_minimisation(ev: Evaluation, objectives: Sequence[str]) -> np.ndarray:
    return np.array([(-1 if OBJECTIVES[o].higher_is_better else 1) * ev.metrics.get(o, np.nan) for o in objectives])


def pareto_front(evals: Sequence[Evaluation], objectives: Sequence[str]) -> list[Evaluation]:
    """Non-dominated feasible evaluations, sorted by the first objective (best first), ties by key.

    pymoo's non-dominated sorting on the candidates whose objectives are all known; a candidate missing
    one (NaN) is compared with nothing, so it is kept, as a pairwise filter would keep it."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    feas = [e for e in evals if e.feasible]
    if not feas:
        return []
    F = np.stack([to_minimisation(e, objectives) for e in feas])
    known = np.flatnonzero(~np.isnan(F).any(axis=1))
    keep = set(np.flatnonzero(np.isnan(F).any(axis=1)).tolist())
    if len(known):
        keep.update(known[NonDominatedSorting().do(F[known], only_non_dominated_front=True)].tolist())
    front = [feas[i] for i in sorted(keep)]
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


def summarise(evals: Sequence[Evaluation], space: SearchSpace, objectives: Sequence[str]) -> SearchResult:
    """Front, parent and hypervolume (relative to the parent) of a run's evaluations."""
    front = pareto_front(evals, objectives)
    parent = next((e for e in evals if e.key == space.largest().key()), None)
    reference = {o: (parent.metrics.get(o, 1.0) if parent else 1.0) for o in objectives}
    return SearchResult(list(evals), front, hypervolume(evals, objectives, reference), parent)


def relative_path(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` as written relative to ``folder`` (both resolved first)."""
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def model_entry(model: str | None, folder: str | os.PathLike) -> str | None:
    """``meta.model`` as ``pareto.json`` in ``folder`` writes it: a folder or file relative to ``folder``;
    an embedded model's name (not a path here) as it is."""
    if model and Path(model).exists():
        return relative_path(model, folder)
    return model


def write_pareto(run_dir: str | Path, result: SearchResult, objectives: Sequence[str],
                 record: Mapping[str, Any]) -> Path:
    """Write ``run_dir/pareto.json``: ``result``'s front and parent, with ``record`` (``run.json``)'s
    meta and settings. Returns the file."""
    run_dir = Path(run_dir)
    evals, front, parent = result.evaluations, result.front, result.parent
    meta = record.get("meta", {})
    profile_file = meta.get("profile_file")
    pareto = {
        "version": SEARCH_VERSION,
        # Paths relative to this file's folder (a run folder moves whole); an embedded model is a name.
        "model": model_entry(meta.get("model"), run_dir),
        "model_hash": meta.get("model_hash"),
        "profile": meta.get("profile"),
        "profile_file": relative_path(profile_file, run_dir) if profile_file else profile_file,
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
        "hypervolume": result.hypervolume,
        # The parent is the reference: "accuracy_measured" says whether metrics.accuracy is a result
        # (false only when its evaluation failed, or in runs journaled before it was always measured).
        "parent": {**parent.to_dict(), "accuracy_measured": accuracy_measured(parent)} if parent else None,
        "front": [{**e.to_dict(), "objectives": {o: e.metrics.get(o) for o in objectives}} for e in front],
    }
    path = run_dir / "pareto.json"
    atomic_write_json(path, pareto)
    return path
