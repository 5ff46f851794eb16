"""What a search is: its objectives (each with its direction), its settings, and the run record.

``run.json`` in a run directory holds the :class:`SearchSettings`, the search space and ``meta`` (model,
profile, task, split, metric, ...): what a resume is checked against (:func:`read_run_record`,
:func:`check_same_split`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.schema import Invalid, Record, checked

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


def _objectives(v: Any) -> tuple[str, ...]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(o, str) for o in v):
        raise Invalid(f"expected a list of objective names, got {v!r}")
    v = tuple(v)
    if len(v) < 2 or len(set(v)) != len(v):
        raise Invalid("need at least two distinct objectives")
    for o in v:
        if o not in OBJECTIVES:
            raise Invalid(f"unknown objective {o!r} (known: {', '.join(OBJECTIVES)})")
    if "accuracy" not in v:
        raise Invalid("accuracy must be one of the objectives")
    return v


def _integer(low: int, problem: str):
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise Invalid(f"expected an integer, got {v!r}")
        if v < low:
            raise Invalid(problem.format(v=v))
        return v

    return check


def _optional_number(check_range, problem: str):
    def check(v: Any) -> float | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v):
            raise Invalid(f"expected a finite number, got {v!r}")
        if not check_range(float(v)):
            raise Invalid(problem.format(v=float(v)))
        return float(v)

    return check


def _version(v: Any) -> int:
    if v != SEARCH_VERSION or isinstance(v, bool):
        raise Invalid(f"unsupported search settings version {v} (this toolkit writes {SEARCH_VERSION})")
    return v


@dataclass(frozen=True)
class SearchSettings(Record):
    """Everything that determines a search's trajectory (checked on resume)."""

    objectives: tuple[str, ...] = checked(_objectives, ("accuracy", "decode_tokens_per_s"))
    algorithm: str = checked(schema.choice("nsga2", "random"), "nsga2")
    evals: int = checked(_integer(2, "need at least 2 evaluations, got {v}"), 100)
    population: int = checked(_integer(4, "need a population of at least 4, got {v}"), 50)
    seed: int = checked(_integer(0, "must be a non-negative integer, got {v}"), 0)  # numpy refuses negatives
    # A non-positive budget would silently turn its constraint off (or make everything infeasible).
    memory_budget_bytes: float | None = checked(_optional_number(lambda x: x > 0, "must be positive, got {v:g}"), None)
    min_accuracy: float | None = checked(_optional_number(lambda x: 0.0 <= x <= 1.0,
                                                          "must be in [0, 1] (an accuracy, not a percentage), got {v:g}"), None)
    max_params: float | None = checked(_optional_number(lambda x: x > 0, "must be positive, got {v:g}"), None)
    version: int = checked(_version, SEARCH_VERSION)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["objectives"] = list(self.objectives)
        return d


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
        SearchSettings.from_mapping(record["settings"], "settings")
    except ConfigError as exc:
        field = exc.field if exc.field.startswith("settings.") else f"settings.{exc.field}"
        raise ConfigError(field, exc.problem, str(path)) from None
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
