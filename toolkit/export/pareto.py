"""Reading a search run's ``pareto.json`` for export: a typed, validated record and the ``--pick`` rule.

The file is written by :func:`toolkit.search.write_pareto`; this reader takes what export needs from it
(the front, the parent, the model and profile it was searched for) and checks every field it uses, so a
truncated, hand-edited or foreign file is a one-line :class:`~toolkit.errors.ConfigError` with a dotted
field path (``front[2].config.heads``) before any model is loaded. Fields export does not use are left
alone, so files from newer searches still read.

``--pick`` is parsed on its own (:func:`parse_pick`) so that a bad value is refused before the file is
even read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from toolkit.errors import ConfigError, UserError
from toolkit.schema import parse_json, read_text_file
from toolkit.space import SubnetConfig

PARETO_FILE = "pareto.json"
PARETO_VERSION = 1


@dataclass(frozen=True)
class Pick:
    """A ``--pick``: a front index, or the fastest member within ``tolerance`` accuracy of the parent."""

    index: int | None = None
    tolerance: float | None = None


def parse_pick(text: str) -> Pick:
    """``"3"`` -> index 3; ``"fastest-within:0.01"`` -> tolerance 0.01. A bad value is a UserError."""
    text = str(text).strip()
    if text.startswith("fastest-within:"):
        raw = text.split(":", 1)[1]
        try:
            tol = float(raw)
        except ValueError:
            raise UserError(f"--pick: fastest-within:{raw}: {raw!r} is not a number (e.g. fastest-within:0.01, "
                            "an accuracy difference)") from None
        if not math.isfinite(tol) or not 0.0 <= tol <= 1.0:
            raise UserError(f"--pick: fastest-within:{raw}: the accuracy tolerance must be in [0, 1]")
        return Pick(tolerance=tol)
    if not text.isdigit():  # also refuses "-1": Python's from-the-end indexing is not a front member
        raise UserError(f"--pick: {text!r} is neither a front index (0, 1, ...; 0 = most accurate) nor "
                        "fastest-within:TOL")
    return Pick(index=int(text))


def _number(v: Any, field: str, file: str | None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(field, f"expected a finite number, got {v!r}", file)
    return float(v)


def _optional_str(d: Mapping[str, Any], key: str, file: str | None) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise ConfigError(key, f"expected a string, got {type(v).__name__}", file)
    return v


@dataclass(frozen=True)
class ParetoEntry:
    """One evaluated sub-network of the file (a front member or the parent)."""

    config: SubnetConfig
    metrics: Mapping[str, float]
    feasible: bool
    accuracy_measured: bool

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy") if self.accuracy_measured else None

    @classmethod
    def from_dict(cls, d: Any, where: str, file: str | None = None, need_accuracy: bool = True) -> "ParetoEntry":
        if not isinstance(d, Mapping):
            raise ConfigError(where, f"expected an object, got {type(d).__name__}", file)
        if "config" not in d:
            raise ConfigError(f"{where}.config", "missing required field", file)
        config = SubnetConfig.from_nested(d["config"], f"{where}.config", file)
        raw = d.get("metrics")
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}.metrics", "missing or not an object", file)
        metrics = {}
        for k, v in raw.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                metrics[k] = _number(v, f"{where}.metrics.{k}", file)
        feasible = d.get("feasible", True)
        if not isinstance(feasible, bool):
            raise ConfigError(f"{where}.feasible", f"expected true or false, got {feasible!r}", file)
        flag = d.get("accuracy_measured")
        if flag is not None and not isinstance(flag, bool):
            raise ConfigError(f"{where}.accuracy_measured", f"expected true or false, got {flag!r}", file)
        if flag is None:  # files from before the search recorded it: an unmeasured accuracy was written as 0.0
            flag = ("accuracy" in metrics and d.get("error") is None
                    and (feasible or metrics["accuracy"] != 0.0 or "accuracy_stderr" in metrics))
        if flag and "accuracy" not in metrics:
            raise ConfigError(f"{where}.metrics.accuracy", "missing (the entry says its accuracy was measured)", file)
        if need_accuracy and not flag:
            raise ConfigError(f"{where}.metrics.accuracy", "missing or never measured", file)
        return cls(config=config, metrics=metrics, feasible=feasible, accuracy_measured=bool(flag))


@dataclass(frozen=True)
class ParetoFront:
    """What export reads from a search run's ``pareto.json``."""

    front: tuple[ParetoEntry, ...]
    parent: ParetoEntry | None
    model: str | None = None
    model_hash: str | None = None
    profile: str | None = None
    profile_file: str | None = None
    task: str | None = None
    version: int = PARETO_VERSION

    @classmethod
    def from_dict(cls, d: Any, file: str | None = None) -> "ParetoFront":
        if not isinstance(d, Mapping):
            raise ConfigError("<root>", f"expected a JSON object (a pareto.json written by toolkit search), got "
                              f"{type(d).__name__}", file)
        version = d.get("version", PARETO_VERSION)
        if version != PARETO_VERSION:
            raise ConfigError("version", f"unsupported version {version!r} (this toolkit reads {PARETO_VERSION})", file)
        front = d.get("front")
        if not isinstance(front, list):
            raise ConfigError("front", "missing or not a list (not a pareto.json written by toolkit search)", file)
        entries = tuple(ParetoEntry.from_dict(e, f"front[{i}]", file) for i, e in enumerate(front))
        parent = d.get("parent")
        return cls(front=entries,
                   parent=None if parent is None else ParetoEntry.from_dict(parent, "parent", file, need_accuracy=False),
                   model=_optional_str(d, "model", file), model_hash=_optional_str(d, "model_hash", file),
                   profile=_optional_str(d, "profile", file), profile_file=_optional_str(d, "profile_file", file),
                   task=_optional_str(d, "task", file), version=version)

    @classmethod
    def read(cls, run_dir: str | Path) -> "ParetoFront":
        path = Path(run_dir) / PARETO_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {PARETO_FILE} (run `toolkit search` or `toolkit report` first)")
        return cls.from_dict(parse_json(read_text_file(path), str(path)), str(path))

    def pick(self, pick: Pick, file: str | None = None) -> ParetoEntry:
        """The front member ``pick`` names; a one-line error when there is none."""
        where = f"{file}: " if file else ""
        if not self.front:
            raise UserError(f"{where}front: empty (no feasible sub-network was found)")
        if pick.index is not None:
            if pick.index >= len(self.front):
                raise UserError(f"--pick: {pick.index} is out of range: the front has {len(self.front)} member(s) "
                                f"(0..{len(self.front) - 1})")
            return self.front[pick.index]
        if self.parent is None:
            raise UserError(f"--pick fastest-within: {where}parent: the run has no record of the parent, the "
                            "accuracy reference; pick a front index instead")
        if not self.parent.accuracy_measured:
            raise UserError(f"--pick fastest-within: {where}parent.accuracy: the parent's accuracy was never "
                            "measured in this run (it was infeasible), so there is no reference to be within; "
                            "pick a front index instead")
        floor = self.parent.metrics["accuracy"] - pick.tolerance
        ok = [e for e in self.front if e.metrics["accuracy"] >= floor]
        if not ok:
            raise UserError(f"--pick: {where}no front member within {pick.tolerance:g} accuracy of the parent "
                            f"({self.parent.metrics['accuracy']:.4f})")
        return max(ok, key=lambda e: e.metrics.get("decode_tokens_per_s", 0.0))
