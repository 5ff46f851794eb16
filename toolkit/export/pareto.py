"""Reading a search run's ``pareto.json`` for export: a typed, self-checking record and the ``--pick`` rule.

The file is written by :func:`toolkit.search.write_pareto`; :class:`ParetoFront` takes what export needs
from it (the front, the parent, the objectives, the model and profile it was searched for) and checks
every field it uses with :mod:`toolkit.schema`, so a truncated, hand-edited or foreign file is a one-line
:class:`~toolkit.errors.ConfigError` naming the file and the dotted field (``front[2].config.heads``)
before any model is loaded. Fields export does not use are left alone, so files from newer searches still
read.

**Paths.** ``model`` (unless it is an embedded model's name) and ``profile_file`` are paths: a relative one
is relative to the folder that holds the ``pareto.json``, and is resolved against it on reading; an
absolute one is kept.

**Picking.** ``--pick`` is parsed on its own (:func:`parse_pick`) so that a bad value is refused before
the file is even read. A front index counts from the most accurate member, which holds only when
accuracy is the first objective (the front is ordered by it): :meth:`ParetoFront.pick` refuses an index
otherwise. ``fastest-within:TOL`` is :func:`best_within`, the one rule for "the best member within TOL
accuracy of a reference" that the benchmarks use too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

from toolkit.errors import ConfigError, UserError
from toolkit.schema import Invalid, Record, checked, flag, optional, parse_json, read_text_file, show
from toolkit.space import SubnetConfig

PARETO_FILE = "pareto.json"
PARETO_VERSION = 1

T = TypeVar("T")


def best_within(items: Iterable[T], tolerance: float, reference: float, accuracy: Callable[[T], float],
                rank: Callable[[T], float]) -> T | None:
    """Of ``items`` whose ``accuracy`` is at least ``reference - tolerance``, the one with the largest
    ``rank`` (the first of equals); None when no item is that close.

    ``fastest-within`` ranks by decode speed, with the parent's accuracy as the reference; a caller
    whose accuracies are already differences to the reference passes ``reference=0``."""
    floor = reference - tolerance
    return max((x for x in items if accuracy(x) >= floor), key=rank, default=None)


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


# -- field checks (toolkit.schema: value -> normalised value, or Invalid) ----------------------------
def _string(v: Any) -> str:
    """A string kept as written (a path or a hash: no whitespace folding)."""
    if not isinstance(v, str):
        raise Invalid(f"expected a string, got {type(v).__name__}")
    return v


def _config(v: Any) -> SubnetConfig:
    if isinstance(v, SubnetConfig):
        return v
    try:
        return SubnetConfig.from_dict(v)
    except ConfigError as exc:
        raise Invalid(exc.problem, None if exc.field == "<root>" else exc.field) from None


def _metrics(v: Any) -> dict[str, float]:
    """The numeric metrics (others, e.g. a null stderr, are not metrics export reads), each finite."""
    if not isinstance(v, Mapping):
        raise Invalid("missing or not an object")
    out = {}
    for k, x in v.items():
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            if not math.isfinite(x):
                raise Invalid(f"expected a finite number, got {x!r}", k)
            out[k] = float(x)
    return out


def _objectives(v: Any) -> tuple[str, ...]:
    """``[{"name": "accuracy", "higher_is_better": true}, ...]`` (as written) or the names -> the names, in order."""
    if not isinstance(v, (list, tuple)) or not v:
        raise Invalid(f"expected a non-empty list of objectives, got {show(v)}")
    names = []
    for i, o in enumerate(v):
        name = o.get("name") if isinstance(o, Mapping) else o
        if not isinstance(name, str):
            raise Invalid(f"item {i}: expected an object with a string name, got {show(o)}")
        names.append(name)
    return tuple(names)


def _version(v: Any) -> int:
    if v != PARETO_VERSION or isinstance(v, bool):
        raise Invalid(f"unsupported version {v!r} (this toolkit reads {PARETO_VERSION})")
    return v


def _at(where: str, exc: ConfigError, file: str | None) -> ConfigError:
    """``exc`` (a field of a record read at ``where``) with its full dotted path and the file."""
    return ConfigError(f"{where}.{exc.field}", exc.problem, file)


# -- the records ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParetoEntry(Record):
    """One evaluated sub-network of the file (a front member or the parent).

    ``metrics``: the entry's numeric metrics (``accuracy`` in [0, 1], ``decode_tokens_per_s``, ``params``,
    ...); ``accuracy_measured``: whether ``metrics["accuracy"]`` is a result (an infeasible candidate's
    accuracy may never have been measured)."""

    config: SubnetConfig = checked(_config)
    metrics: Mapping[str, float] = checked(_metrics)
    feasible: bool = checked(flag, True)
    accuracy_measured: bool = checked(flag, False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.accuracy_measured and "accuracy" not in self.metrics:
            raise ConfigError("metrics.accuracy", "missing (the entry says its accuracy was measured)")

    @property
    def accuracy(self) -> float | None:
        return self.metrics.get("accuracy") if self.accuracy_measured else None

    @classmethod
    def from_dict(cls, d: Any, where: str, file: str | None = None) -> "ParetoEntry":
        if not isinstance(d, Mapping):
            raise ConfigError(where, f"expected an object, got {type(d).__name__}", file)
        if "config" not in d:
            raise ConfigError(f"{where}.config", "missing required field", file)
        measured = d.get("accuracy_measured")
        try:
            return cls(config=d["config"], metrics=d.get("metrics"), feasible=d.get("feasible", True),
                       accuracy_measured=_legacy_accuracy_measured(d) if measured is None else measured)
        except ConfigError as exc:
            raise _at(where, exc, file) from None


def _legacy_accuracy_measured(d: Mapping[str, Any]) -> bool:
    """Files from before the search recorded ``accuracy_measured`` wrote an unmeasured accuracy as 0.0: an
    entry's accuracy counts as measured if it has one, no error, and it is feasible, nonzero or has a stderr."""
    m = d.get("metrics")
    if not isinstance(m, Mapping):
        return False  # the record refuses the metrics

    def num(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    return (num(m.get("accuracy")) and d.get("error") is None
            and (d.get("feasible", True) is True or m["accuracy"] != 0.0 or num(m.get("accuracy_stderr"))))


def _entries(v: Any) -> tuple[ParetoEntry, ...]:
    if not isinstance(v, (list, tuple)):
        raise Invalid("missing or not a list (not a pareto.json written by toolkit search)")
    for i, e in enumerate(v):
        if not isinstance(e, ParetoEntry):
            raise Invalid(f"item {i}: expected a ParetoEntry, got {show(e)}")
    return tuple(v)


def _parent(v: Any) -> ParetoEntry | None:
    if v is not None and not isinstance(v, ParetoEntry):
        raise Invalid(f"expected a ParetoEntry or None, got {show(v)}")
    return v


@dataclass(frozen=True)
class ParetoFront(Record):
    """What export reads from a search run's ``pareto.json``.

    ``front``: the non-dominated feasible sub-networks, ordered by the first objective, best first (every
    one with a measured accuracy); ``parent``: the full network, the accuracy reference (None in runs that
    did not record it); ``objectives``: the search's objectives in order (None in files from before they
    were recorded, whose first objective was accuracy); ``model``: the parent model, an embedded model's
    name or a path; ``model_hash``: its hash; ``profile`` / ``profile_file``: the device profile's name and
    the file it was read from; ``task``: the task the accuracies are on."""

    front: tuple[ParetoEntry, ...] = checked(_entries)
    parent: ParetoEntry | None = checked(_parent, None)
    objectives: tuple[str, ...] | None = checked(optional(_objectives), None)
    model: str | None = checked(optional(_string), None)
    model_hash: str | None = checked(optional(_string), None)
    profile: str | None = checked(optional(_string), None)
    profile_file: str | None = checked(optional(_string), None)
    task: str | None = checked(optional(_string), None)
    version: int = checked(_version, PARETO_VERSION)

    PATH_FIELDS: ClassVar[tuple[str, ...]] = ("model", "profile_file")  # relative to the file's folder

    def __post_init__(self) -> None:
        super().__post_init__()
        for i, e in enumerate(self.front):
            if not e.accuracy_measured:
                raise ConfigError(f"front[{i}].metrics.accuracy", "missing or never measured")

    @classmethod
    def from_dict(cls, d: Any, file: str | None = None) -> "ParetoFront":
        """Validate ``d`` (a parsed ``pareto.json``); relative paths are resolved against ``file``'s folder."""
        if not isinstance(d, Mapping):
            raise ConfigError("<root>", f"expected a JSON object (a pareto.json written by toolkit search), got "
                              f"{type(d).__name__}", file)
        try:
            _version(d.get("version", PARETO_VERSION))
        except Invalid as bad:
            raise ConfigError("version", bad.problem, file) from None
        if not isinstance(d.get("front"), list):
            raise ConfigError("front", "missing or not a list (not a pareto.json written by toolkit search)", file)
        front = tuple(ParetoEntry.from_dict(e, f"front[{i}]", file) for i, e in enumerate(d["front"]))
        parent = None if d.get("parent") is None else ParetoEntry.from_dict(d["parent"], "parent", file)
        fields = {k: d.get(k) for k in ("objectives", "model", "model_hash", "profile", "profile_file", "task")}
        try:
            pf = cls(front=front, parent=parent, version=d.get("version", PARETO_VERSION), **fields)
        except ConfigError as exc:
            raise exc.with_file(file) from None
        return pf.resolve_paths(Path(file).parent) if file is not None else pf

    @classmethod
    def read(cls, run_dir: str | Path) -> "ParetoFront":
        path = Path(run_dir) / PARETO_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {PARETO_FILE} (run `toolkit search` or `toolkit report` first)")
        return cls.from_dict(parse_json(read_text_file(path), str(path)), str(path))

    def resolve_paths(self, folder: Path) -> "ParetoFront":
        """This front with its relative paths (:attr:`PATH_FIELDS`) made relative to ``folder`` instead of
        the current directory; an absolute path, and an embedded model's name, stay as they are."""
        from toolkit.models.loading import EMBEDDED

        new = {}
        for name in self.PATH_FIELDS:
            v = getattr(self, name)
            if v is None or Path(v).expanduser().is_absolute() or (name == "model" and v.lower() in EMBEDDED):
                continue
            new[name] = str((Path(folder) / Path(v).expanduser()).resolve())
        return dataclasses.replace(self, **new) if new else self

    def profile_ref(self) -> str | None:
        """The profile the search ran for: its file when it still exists (a measured profile written next to
        the run is not on the profile search path), else its name."""
        if self.profile_file and Path(self.profile_file).is_file():
            return self.profile_file
        return self.profile

    def fastest_within(self, tolerance: float, file: str | None = None) -> ParetoEntry | None:
        """The front member with the highest ``decode_tokens_per_s`` among those whose accuracy is at least
        the parent's minus ``tolerance`` (None if none is). A UserError when the run has no measured parent
        accuracy to be within (``file`` names the pareto.json in it)."""
        where = f"{file}: " if file else ""
        if self.parent is None:
            raise UserError(f"--pick fastest-within: {where}parent: the run has no record of the parent, the "
                            "accuracy reference; pick a front index instead")
        if not self.parent.accuracy_measured:
            raise UserError(f"--pick fastest-within: {where}parent.accuracy: the parent's accuracy was never "
                            "measured in this run (it was infeasible), so there is no reference to be within; "
                            "pick a front index instead")
        return best_within(self.front, tolerance, self.parent.metrics["accuracy"],
                           accuracy=lambda e: e.metrics["accuracy"],
                           rank=lambda e: e.metrics.get("decode_tokens_per_s", 0.0))

    def pick(self, pick: Pick, file: str | None = None) -> ParetoEntry:
        """The front member ``pick`` names; a one-line error when there is none."""
        where = f"{file}: " if file else ""
        if not self.front:
            raise UserError(f"{where}front: empty (no feasible sub-network was found)")
        if pick.index is not None:
            if self.objectives is not None and self.objectives[0] != "accuracy":
                raise UserError(f"--pick {pick.index}: {where}objectives: the front is ordered by "
                                f"{self.objectives[0]!r}, not accuracy, so a front index does not count from the "
                                "most accurate member; pick fastest-within:TOL, or search with accuracy first in "
                                "--objectives")
            if pick.index >= len(self.front):
                raise UserError(f"--pick: {pick.index} is out of range: the front has {len(self.front)} member(s) "
                                f"(0..{len(self.front) - 1})")
            return self.front[pick.index]
        best = self.fastest_within(pick.tolerance, file)
        if best is None:
            raise UserError(f"--pick: {where}no front member within {pick.tolerance:g} accuracy of the parent "
                            f"({self.parent.metrics['accuracy']:.4f})")
        return best
