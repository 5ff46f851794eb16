"""A task's examples: :class:`Example` (the requests lm-eval would score for one item) and
:class:`TaskData` (a task's validated examples, cut into its search and report parts by
:func:`split_positions`, or a seeded subset)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from toolkit.errors import UserError
from toolkit.tasks.registry import Task

PARTS = ("search", "report", "all")  # TaskData.split: the search's half, the held-out half, everything


@dataclass(frozen=True)
class Example:
    """One multiple-choice item, as the requests lm-eval would score."""

    id: str
    requests: tuple[tuple[str, str], ...]  # (context, continuation) per choice
    norm_lengths: tuple[int, ...]  # lm-eval's acc_norm divisor per choice (characters)
    label: int
    line: int  # 1-based line in the task file
    # Every true choice (empty: just ``label``). From a row's ``labels`` (MC2: acc still scores ``label``), or
    # an lm-eval YAML's list target (``multiple_target``: acc counts any of them, as lm-eval does).
    golds: tuple[int, ...] = ()
    multiple_target: bool = False
    # The data file ``line`` is in, when a task's split spans several files (an lm-eval YAML's data_files);
    # empty: the task's own file (:attr:`TaskData.file`).
    file: str = ""

    def where(self, task_file: str | Path | None = None) -> str:
        """``file:line`` of this item, for messages (``task_file``: the task's file, when the item has none)."""
        f = self.file or task_file
        return f"{f}:{self.line}" if f else f"example {self.id} (line {self.line})"

    @property
    def num_choices(self) -> int:
        return len(self.requests)

    @property
    def true_choices(self) -> tuple[int, ...]:
        return self.golds or (self.label,)

    @property
    def has_labels(self) -> bool:
        """Several true answers that ``acc`` / ``acc_norm`` do not look at (only ``mc2`` does)."""
        return len(self.true_choices) > 1 and not self.multiple_target

    def chance(self, metric: str) -> float:
        from toolkit.tasks.metrics import chance

        return chance(metric, self.num_choices, len(self.true_choices), self.multiple_target)


def split_positions(name: str, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(search positions, report positions) of a task named ``name`` with ``n`` examples, each sorted.

    The permutation orders positions by SHA-256 of ``"<name>:<position>"`` (see the module docstring);
    the search part is its first ``round(n / 2)`` positions, the report part the rest.
    """
    if n < 2:
        raise UserError(f"task {name}: {n} example(s) cannot be split into search and report parts (need at least 2)")
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"{name}:{i}".encode()).digest())
    cut = round(n / 2)
    return tuple(sorted(order[:cut])), tuple(sorted(order[cut:]))


@dataclass(frozen=True)
class TaskData:
    """A task's examples, loaded and validated; ``split`` takes the search or report part, ``select`` a
    seeded subset (of the part)."""

    task: Task
    file: Path  # the file the examples' line numbers refer to (an example naming its own file: that one)
    examples: tuple[Example, ...]
    num_fewshot: int = 0
    indices: tuple[int, ...] = ()  # positions in the full file (all of them when not a subset)
    # Which part of the task these examples come from: "search", "report" or "all". (Named ``part``, not
    # ``split``: ``split`` is the method that takes one, and ``Task.split`` is the dataset's own split.)
    part: str = "all"
    subset: bool = False  # taken by select(): its halves would not be the task's, so it cannot be split

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise UserError(f"split: must be one of {', '.join(PARTS)}, got {self.part!r}")

    def __len__(self) -> int:
        return len(self.examples)

    def chance(self, metric: str) -> float:
        """Expected ``metric`` of uniform guessing, the mean over these examples."""
        return float(np.mean([e.chance(metric) for e in self.examples]))

    @property
    def has_labels(self) -> bool:
        return any(e.has_labels for e in self.examples)

    def split(self, part: str) -> "TaskData":
        """The ``part`` ("search", "report" or "all") of the whole task, in file order; ``indices`` stay
        positions in the full file. Asking a part for its own part returns it; any other split of a part,
        or a split of a ``select`` subset (its halves would not be the task's), is a :class:`UserError`."""
        if part not in PARTS:
            raise UserError(f"split: must be one of {', '.join(PARTS)}, got {part!r}")
        if part == self.part:
            return self
        if self.part != "all":
            raise UserError(f"task {self.task.name}: already the {self.part} part; it cannot be split again "
                            "(split the whole task, then select)")
        if self.subset or (self.indices and self.indices != tuple(range(len(self.examples)))):
            raise UserError(f"task {self.task.name}: a {len(self)}-example subset cannot be split; split the whole "
                            "task first, then select")
        search, report = split_positions(self.task.name, len(self.examples))
        keep = search if part == "search" else report
        return replace(self, examples=tuple(self.examples[i] for i in keep), indices=keep, part=part)

    def select(self, limit: int | None, seed: int = 0) -> "TaskData":
        """A fixed random subset of ``limit`` examples (seeded; kept in file order) of this part; all when
        ``limit`` is None."""
        n = len(self.examples)
        if limit is None or limit >= n:
            return self
        if limit <= 0:
            raise UserError(f"limit: must be positive, got {limit}")
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(n, size=limit, replace=False))
        base = self.indices or tuple(range(n))
        return replace(self, examples=tuple(self.examples[i] for i in keep), indices=tuple(base[i] for i in keep), subset=True)
