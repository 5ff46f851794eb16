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

from toolkit.errors import ConfigError, UserError

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
