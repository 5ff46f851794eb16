"""The evaluation record and the run's evaluation journal (``run/evaluations.jsonl``).

:class:`Evaluation` is one evaluated sub-network (config, metrics, feasibility); :class:`EvaluationJournal`
holds a run's evaluations by config key on a :class:`~toolkit.search.journal.JournalFile` (each line
fsynced before it counts, validated as an :class:`Evaluation` when read back). :func:`load_evaluations`
reads a run's journal without touching it; :func:`accuracy_measured` is the one rule for whether an
accuracy is a result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.search.journal import JournalFile, line_error
from toolkit.space import SearchSpace, SubnetConfig


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

        if not isinstance(d, Mapping):
            raise bad("<root>", "expected a JSON object")
        schema.fields(dict(d), "", ("index", "key", "config", "metrics", "feasible", "violation", "error", "seconds"),
                      ("index", "key", "config", "metrics", "feasible"), file)
        key = d["key"]
        index = schema.get(d, "index", schema.index, file)
        feasible = schema.get(d, "feasible", schema.flag, file)
        error = schema.get(d, "error", schema.optional(_text_or_null), file, None)
        metrics = schema.get(d, "metrics", schema.mapping_of(schema.real, "numbers"), file)
        violation = schema.get(d, "violation", _non_negative_real, file, 0.0)
        seconds = schema.get(d, "seconds", _non_negative_real, file, 0.0)
        if feasible and (violation > 0 or error is not None):
            raise bad("feasible", "true, but the record has a violation or an error")
        cfg = SubnetConfig.from_nested(d["config"], "config", file, space.validate if space is not None else None)
        if key != cfg.key():
            raise bad("key", f"{key!r} is not the key of its config ({cfg.key()!r})")
        return cls(index, key, cfg, metrics, feasible, violation, error, seconds)


def _text_or_null(v: Any) -> str:
    if not isinstance(v, str):
        raise schema.Invalid(f"expected a string or null, got {v!r}")
    return v


def _non_negative_real(v: Any) -> float:
    x = schema.real(v)
    if not x >= 0:
        raise schema.Invalid("must be non-negative")
    return x


class EvaluationJournal:
    """The run's evaluations by key, on a :class:`~toolkit.search.journal.JournalFile` (fsynced lines, a torn
    last line dropped and truncated). No header line: ``run.json`` holds the settings. Each line is validated as an
    :class:`Evaluation`, its config against ``space`` (by default the space in ``run.json`` beside the
    journal, when there is one); a bad line or a key journaled twice is a one-line error naming the line.
    ``readonly``: read without touching the file (a torn last line is skipped, not truncated: it may be
    the line a live search is writing); what ``report`` and ``export`` use, via :func:`load_evaluations`.
    """

    def __init__(self, path: Path, space: SearchSpace | None = None, readonly: bool = False):
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


def load_evaluations(run_dir: str | Path) -> list[Evaluation]:
    """A run's complete evaluations, by index. Read-only: the journal is left byte-identical (a torn
    last line is skipped, not truncated), so this is safe beside a search that is still writing it."""
    path = Path(run_dir) / "evaluations.jsonl"
    if not path.exists():
        raise UserError(f"{run_dir}: no evaluations.jsonl (not a search run directory)")
    return sorted(EvaluationJournal(path, readonly=True).records.values(), key=lambda e: e.index)
