"""Evaluation tasks: a registry of typed entries with lm-evaluation-harness names, prompts and metrics.

Every multiple-choice task is a JSONL file in the common schema of the data directory
(``../shared/data/README.md``)::

    {"id": "...", "context": "Question: ...\\nAnswer:", "choices": [" a", " b"], "label": 0}

The prompts are lm-evaluation-harness' zero-shot formats, already applied when the files were made; the
choices start with lm-eval's ``target_delimiter`` (one space). Loading turns each row into an
:class:`Example` holding one ``(context, continuation)`` request per choice, exactly the strings lm-eval
would score, plus the divisor lm-eval uses for ``acc_norm``:

* ``scoring="choices"`` (arc, piqa, hellaswag, boolq, mmlu, user files): request ``k`` is
  ``(context, choices[k])``. lm-eval's ``acc_norm`` divides by ``len(choice)`` in *characters* of the
  choice without its target delimiter (``lm_eval/api/task.py``: ``completion_len = len(i) for i in
  doc_to_choice(doc)``; the delimiter is added later, when the request is built). Its byte-length variant
  is ``acc_bytes``. We reproduce ``acc_norm``, since our numbers must be lm-eval's.
* ``scoring="partial"`` (winogrande, Trinh & Le partial evaluation): request ``k`` is
  ``(partial.contexts[k], partial.continuation)``. lm-eval reports ``acc`` only; if ``acc_norm`` is asked
  for, it divides by the length of ``doc_to_choice``, which for this task is the per-option *context*.
  We compute it that way so both sides agree, but only ``acc`` is the published metric.
* ``scoring="perplexity"`` (wikitext2): a plain text file, scored by :func:`toolkit.evaluate.perplexity`.

**Several true answers** (TruthfulQA's MC2 format): a row may carry ``"labels": [1, 1, 0, 0]`` beside
``label``, one 0/1 per choice, at least one 1 and one 0, with ``labels[label] == 1``. ``mc2`` scores the
probability mass on every true answer (:mod:`toolkit.tasks.metrics`); ``acc`` / ``acc_norm`` still score
``label`` alone, so evaluating such a file by them is a warning (:func:`labels_warning`).

MMLU 5-shot follows lm-eval: the first 5 ``dev`` rows of the same subject, as
``description + sum(query + " " + letter + "\\n\\n") + query``, where ``description`` is the prefix of the
context up to and including the first blank line.

**Tasks users bring.** Any other ``*.jsonl`` path in the common schema is a task too
(``scoring="choices"``), and so is an lm-evaluation-harness task YAML of the ``multiple_choice`` type
(:mod:`toolkit.tasks.lm_eval_yaml`). A relative path is looked up in the current folder, then in the data
directory. A file's task name is its stem, or ``<folder>/<stem>`` when the stem only names a split
(``openbookqa/test``); a YAML's is its ``task`` key. Every row is checked; a bad one stops loading with one
line naming the file, the line number and the field. Few-shot prompts for them follow lm-eval's sampler
(:mod:`toolkit.tasks.fewshot`).

**Search and report parts** (:meth:`TaskData.split`). The search keeps the sub-networks whose accuracy on
its examples came out highest; among many candidates with noisy estimates (standard error ~3.5 pt at
n=200) the winners are partly the lucky ones, so their accuracy on those same examples is biased upwards
(selection bias, the "winner's curse"). Numbers that are reported must therefore be measured on examples
the search never saw. Every multiple-choice task is cut into two disjoint halves: the *search* part (the
first ``round(n / 2)`` positions of a fixed permutation, where ``toolkit search`` draws its ``--limit``
subset) and the *report* part (the rest; ``toolkit eval --split report``). The permutation depends only on
the task's name and its number of examples, never on a search seed, so every run, process and machine
cuts the same way. It orders the positions by SHA-256 of ``"<task name>:<position>"`` rather than with a
numpy Generator: numpy does not promise the same stream across releases (NEP 19), and a split that moved
after an upgrade would leak search examples into reports.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.fileio import expand_user
from toolkit.tasks.metrics import METRICS

TASK_VERSION = 1
SCORINGS = ("choices", "partial", "perplexity")
SOURCES = ("registry", "jsonl", "yaml")  # where a task's definition comes from
SAMPLERS = ("first_n", "default")  # lm-eval's few-shot samplers: the first k rows, or seeded random draws
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
_SPLIT_STEMS = {"test", "validation", "valid", "val", "dev", "train"}  # stems that name a split, not a task
PARTS = ("search", "report", "all")  # TaskData.split: the search's half, the held-out half, everything


@dataclass(frozen=True)
class Task:
    """One evaluation task: where its data lives, how it is scored, which metrics it reports."""

    name: str  # the lm-evaluation-harness task name (a user file's name: see the module doc)
    file: str  # relative to the data directory, or an absolute path for user files
    scoring: str = "choices"
    metrics: tuple[str, ...] = ("acc", "acc_norm")  # what lm-eval reports for this task
    higher_is_better: Mapping[str, bool] = field(default_factory=lambda: {"acc": True, "acc_norm": True})
    split: str = "test"
    # Rows to draw few-shot examples from: MMLU's dev rows of the same subject ("first_n" by subject), or
    # for a user file another file (None: the task's own file, each row's own line left out, as lm-eval).
    fewshot_file: str | None = None
    fewshot_options: tuple[int, ...] | None = (0,)  # allowed num_fewshot values; None: any
    fewshot_sampler: str = "first_n"
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    num_fewshot: int = 0  # the default when none is asked for (an lm-eval YAML's num_fewshot)
    description: str = ""
    source: str = "registry"
    spec: Any = field(default=None, compare=False, repr=False)  # an lm-eval YAML's parsed definition
    version: int = TASK_VERSION

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ConfigError("scoring", f"must be one of {', '.join(SCORINGS)}, got {self.scoring!r}", self.name)
        if self.source not in SOURCES:
            raise ConfigError("source", f"must be one of {', '.join(SOURCES)}, got {self.source!r}", self.name)
        if self.fewshot_sampler not in SAMPLERS:
            raise ConfigError("fewshot_sampler", f"must be one of {', '.join(SAMPLERS)}, got {self.fewshot_sampler!r}", self.name)
        object.__setattr__(self, "higher_is_better", dict(self.higher_is_better))
        for m in self.metrics:
            if m not in METRICS and (m, self.scoring) != ("perplexity", "perplexity"):
                raise ConfigError("metrics", f"unknown metric {m!r} (one of {', '.join(METRICS)})", self.name)
            if m not in self.higher_is_better:
                raise ConfigError("higher_is_better", f"metric {m!r} has no direction", self.name)
        if self.fewshot_options is not None:
            if 0 not in self.fewshot_options:
                raise ConfigError("fewshot_options", "zero-shot must always be allowed", self.name)
            if any(k > 0 for k in self.fewshot_options) and not self.fewshot_file and self.source == "registry":
                raise ConfigError("fewshot_file", "few-shot options need a file to draw shots from", self.name)
        if self.version != TASK_VERSION:
            raise ConfigError("version", f"unsupported task version {self.version}", self.name)

    def path(self, data_dir: str | os.PathLike | None) -> Path:
        p = Path(self.file)
        if p.is_absolute() or data_dir is None:
            return p
        return Path(data_dir) / p

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "name": self.name, "file": self.file, "scoring": self.scoring,
            "metrics": list(self.metrics), "higher_is_better": dict(self.higher_is_better), "split": self.split,
            "fewshot_file": self.fewshot_file,
            "fewshot_options": None if self.fewshot_options is None else list(self.fewshot_options),
            "fewshot_sampler": self.fewshot_sampler, "target_delimiter": self.target_delimiter,
            "fewshot_delimiter": self.fewshot_delimiter, "num_fewshot": self.num_fewshot, "description": self.description, "source": self.source,
        }

    def check_fewshot(self, num_fewshot: int) -> None:
        if self.fewshot_options is not None and num_fewshot not in self.fewshot_options:
            opts = ", ".join(map(str, self.fewshot_options))
            why = " (its YAML sets num_fewshot: 0, which lm-eval never overrides)" if self.source == "yaml" else ""
            raise UserError(f"task {self.name}: num_fewshot {num_fewshot} is not supported{why} (choose {opts})")
        if num_fewshot < 0:
            raise UserError(f"task {self.name}: num_fewshot must be at least 0, got {num_fewshot}")
        if num_fewshot and self.scoring == "partial":
            raise UserError(f"task {self.name}: few-shot prompts are not built for partial scoring (use 0)")


_ACC_NORM = {"acc": True, "acc_norm": True}

# The registry: one typed entry per task, keyed by its lm-evaluation-harness name.
REGISTRY: dict[str, Task] = {
    t.name: t
    for t in (
        Task("arc_easy", "arc_easy/test.jsonl", description="AI2 ARC Easy, test (2376)"),
        Task("arc_challenge", "arc_challenge/test.jsonl", description="AI2 ARC Challenge, test (1172)"),
        Task("piqa", "piqa/validation.jsonl", split="validation", description="PIQA, validation (1838)"),
        Task("hellaswag", "hellaswag/validation.jsonl", split="validation",
             description="HellaSwag, validation (10042); ctx_b not capitalised, see the data README"),
        Task("winogrande", "winogrande/validation.jsonl", scoring="partial", metrics=("acc",), higher_is_better=_ACC_NORM,
             split="validation", description="WinoGrande 1.1 dev (1267), partial scoring"),
        Task("boolq", "boolq/validation.jsonl", metrics=("acc",), higher_is_better=_ACC_NORM, split="validation",
             description="SuperGLUE BoolQ, validation (3270)"),
        Task("mmlu", "mmlu/test.jsonl", metrics=("acc",), higher_is_better=_ACC_NORM, fewshot_file="mmlu/dev.jsonl",
             fewshot_options=(0, 5), description="MMLU, 57 subjects, test (14042); 0- or 5-shot from dev"),
        # lm-eval's openbookqa: doc_to_text question_stem (no "Question:" prefix), acc and acc_norm.
        Task("openbookqa", "openbookqa/test.jsonl", description="OpenBookQA main, test (500)"),
        # lm-eval's truthfulqa_mc1 / _mc2: the 6-shot QA primer in the context, validation (817). MC1 has one
        # true answer (acc); MC2 several (rows carry labels), scored by the probability mass on them.
        Task("truthfulqa_mc1", "truthfulqa/validation.jsonl", metrics=("acc",), higher_is_better=_ACC_NORM,
             split="validation", description="TruthfulQA MC1, validation (817); chance ~0.23"),
        Task("truthfulqa_mc2", "truthfulqa/validation_mc2.jsonl", metrics=("mc2",),
             higher_is_better={**_ACC_NORM, "mc2": True}, split="validation",
             description="TruthfulQA MC2, validation (817); rows carry labels"),
        Task("wikitext2", "wikitext2/test.txt", scoring="perplexity", metrics=("perplexity",),
             higher_is_better={"perplexity": False}, description="tokenized WikiText-2 test (not the raw file)"),
    )
}


def list_tasks() -> list[Task]:
    return list(REGISTRY.values())


TASK_FILE_SUFFIXES = (".jsonl", ".yaml", ".yml")


def find_task_file(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """A user's task file: the path as given (from the current folder), else under ``data_dir``."""
    p = expand_user(name_or_path)
    tried = [p]
    if not p.is_absolute() and data_dir is not None:
        tried.append(Path(data_dir) / p)
    for c in tried:
        if c.is_file():
            return c.resolve()
    raise UserError(f"{p}: task file not found (looked in {' and '.join(str(c.parent.resolve()) for c in tried)})")


def task_name_for(path: Path) -> str:
    """A user file's task name: its stem, or ``<folder>/<stem>`` when the stem only names a split."""
    return f"{path.parent.name}/{path.stem}" if path.stem.lower() in _SPLIT_STEMS and path.parent.name else path.stem


def get_task(name_or_path: str, data_dir: str | os.PathLike | None = None) -> Task:
    """A registered task by name, a user JSONL file in the common schema, or an lm-eval task YAML
    (relative paths: the current folder first, then ``data_dir``)."""
    if name_or_path in REGISTRY:
        return REGISTRY[name_or_path]
    p = expand_user(name_or_path)
    if p.suffix in TASK_FILE_SUFFIXES:
        path = find_task_file(p, data_dir)
        if p.suffix == ".jsonl":
            return Task(task_name_for(path), str(path), split="user", metrics=("acc", "acc_norm"), fewshot_options=None,
                        fewshot_sampler="default", source="jsonl", description=f"user file {path}")
        from toolkit.tasks.lm_eval_yaml import read_task_yaml

        return read_task_yaml(path, data_dir)
    known = ", ".join(REGISTRY)
    raise UserError(f"task {name_or_path!r}: unknown; use one of {known}, a path to a .jsonl file in the common "
                    "schema, or an lm-eval task .yaml")


# -- examples ---------------------------------------------------------------------------------------
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
    file: Path  # the file the examples' line numbers refer to
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


def _where(path: Path, line: int) -> str:
    return f"{path}:{line}"


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; one-line errors naming file and line."""
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read task file ({exc.strerror})") from None
    rows = []
    with fh:
        try:
            for n, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ConfigError("<json>", f"invalid JSON ({exc.msg} at column {exc.colno})", _where(path, n)) from None
                if not isinstance(obj, dict):
                    raise ConfigError("<row>", f"expected a JSON object, got {type(obj).__name__}", _where(path, n))
                rows.append((n, obj))
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not rows:
        raise UserError(f"{path}: no examples in the task file")
    return rows


def _string(obj: dict, key: str, where: str, allow_empty: bool = True) -> str:
    return schema.get(obj, key, schema.string(allow_empty), where)


def _strings(obj: dict, key: str, where: str) -> list[str]:
    return schema.get(obj, key, schema.strings, where)


def _labels(obj: dict, num_choices: int, label: int, where: str) -> tuple[int, ...]:
    """The true choices of a row's optional ``labels`` (one 0/1 per choice), or () without it."""
    if "labels" not in obj:
        return ()
    v = obj["labels"]
    if not isinstance(v, list):
        raise ConfigError("labels", f"expected a list of 0/1 per choice, got {type(v).__name__}", where)
    if len(v) != num_choices:
        raise ConfigError("labels", f"has {len(v)} entries for {num_choices} choices", where)
    for i, x in enumerate(v):
        if isinstance(x, bool) or x not in (0, 1):
            raise ConfigError(f"labels[{i}]", f"expected 0 or 1, got {x!r}", where)
    if 1 not in v:
        raise ConfigError("labels", "no true answer (at least one 1)", where)
    if 0 not in v:
        raise ConfigError("labels", "every choice is true (at least one 0): the item cannot tell models apart", where)
    if v[label] != 1:
        raise ConfigError("label", f"choice {label} is not one of the true answers in labels", where)
    return tuple(i for i, x in enumerate(v) if x == 1)


def _label(obj: dict, num_choices: int, where: str) -> int:
    v = schema.get(obj, "label", _label_index, where)
    if not 0 <= v < num_choices:
        raise ConfigError("label", f"{v} is out of range for {num_choices} choices", where)
    return v


def _label_index(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise schema.Invalid(f"expected an integer choice index, got {v!r}")
    return v


def _strip_delimiter(choice: str, delimiter: str) -> str:
    return choice[len(delimiter):] if delimiter and choice.startswith(delimiter) else choice


def parse_row(task: Task, obj: dict, where: str, line: int) -> Example:
    """Validate one row and turn it into an :class:`Example` (raises ConfigError naming ``where``)."""
    choices = _strings(obj, "choices", where)
    if len(choices) < 2:  # one choice is always "right": it would count as accuracy 1.0
        raise ConfigError("choices", f"need at least 2 choices, got {len(choices)}", where)
    if task.scoring == "partial":
        part = obj.get("partial")
        if not isinstance(part, dict):
            raise ConfigError("partial", "missing or not an object (partial scoring needs contexts + continuation)", where)
        contexts = _strings(part, "contexts", where)
        if len(contexts) != len(choices):
            raise ConfigError("partial.contexts", f"has {len(contexts)} entries for {len(choices)} choices", where)
        cont = _string(part, "continuation", where, allow_empty=False)
        requests = tuple((c, cont) for c in contexts)
        norm = tuple(len(c) for c in contexts)  # lm-eval: len(doc_to_choice) = the option contexts
    else:
        context = _string(obj, "context", where)
        requests = tuple((context, c) for c in choices)
        norm = tuple(len(_strip_delimiter(c, task.target_delimiter)) for c in choices)
    label = _label(obj, len(choices), where)
    golds = _labels(obj, len(choices), label, where)
    if "mc2" in task.metrics and not golds:
        raise ConfigError("labels", f"missing: {task.name} scores mc2, which needs the 0/1 labels of every choice", where)
    if "id" in obj and (isinstance(obj["id"], bool) or not isinstance(obj["id"], (str, int))):
        raise ConfigError("id", f"expected a string, got {type(obj['id']).__name__}", where)
    ident = str(obj.get("id", f"{task.name}-{line}"))
    return Example(ident, requests, tuple(max(n, 1) for n in norm), label, line, golds)


def _fewshot_prefixes(task: Task, data_dir: str | os.PathLike | None, k: int) -> tuple[dict[str, str], Path]:
    """subject -> the few-shot block between the description and the query (lm-eval's format).

    lm-eval's MMLU takes the first ``k`` rows of the subject's dev split (sampler ``first_n``), each as
    ``query + target_delimiter + letter`` and joined by ``fewshot_delimiter = "\\n\\n"``.
    """
    path = replace(task, file=task.fewshot_file).path(data_dir)
    shots: dict[str, list[str]] = {}
    for line, obj in _read_jsonl(path):
        where = _where(path, line)
        ex = parse_row(task, obj, where, line)
        subject = _string(obj, "subject", where)
        context = ex.requests[0][0]
        cut = context.find("\n\n")
        if cut < 0:
            raise ConfigError("context", "no blank line separating the description from the question", where)
        rows = shots.setdefault(subject, [])
        if len(rows) < k:
            rows.append(context[cut + 2:] + obj["choices"][ex.label] + "\n\n")
    return {s: "".join(v) for s, v in shots.items() if len(v) == k}, path


def _user_fewshot(task: Task, path: Path, rows: list[tuple[int, dict]], examples: list[Example], k: int,
                  seed: int) -> list[Example]:
    """A user file's examples with ``k`` shots each, drawn as lm-eval's default sampler draws them.

    Each shot is ``context + choices[label] + fewshot_delimiter`` (the choices already carry the target
    delimiter), in front of the example's context. Shots come from ``task.fewshot_file``, or from the
    file itself with the example's own row left out (lm-eval's rule when the few-shot split is the test
    split).
    """
    from toolkit.tasks.fewshot import sample_shots

    if task.fewshot_file:
        shots_path = Path(task.fewshot_file)
        pool_rows = _read_jsonl(shots_path)
    else:
        shots_path, pool_rows = path, rows
    pool = []
    for line, obj in pool_rows:
        ex = parse_row(task, obj, _where(shots_path, line), line)
        pool.append((obj, ex.requests[0][0] + obj["choices"][ex.label] + task.fewshot_delimiter))
    text = {id(obj): shot for obj, shot in pool}
    drawn = sample_shots([obj for obj, _ in pool], [obj for _, obj in rows], k, seed, task.fewshot_sampler,
                         exclude_self=not task.fewshot_file, where=str(shots_path))
    out = []
    for ex, shots in zip(examples, drawn):
        prefix = "".join(text[id(obj)] for obj in shots)
        out.append(replace(ex, requests=tuple((prefix + c, k_) for c, k_ in ex.requests)))
    return out


def load_task(task: Task | str, data_dir: str | os.PathLike | None = None, num_fewshot: int | None = None,
              fewshot_seed: int = FEWSHOT_SEED) -> TaskData:
    """Read and validate a multiple-choice task (and its few-shot rows if asked; None: the task's default).

    ``fewshot_seed`` seeds the draws of lm-eval's default sampler (user files and YAML tasks; lm-eval's
    ``fewshot_random_seed``, default 1234); MMLU takes the first rows of its subject, unseeded."""
    if isinstance(task, str):
        task = get_task(task, data_dir)
    if task.scoring == "perplexity":
        raise UserError(f"task {task.name}: a perplexity corpus, not a multiple-choice task (use toolkit.evaluate.perplexity)")
    if num_fewshot is None:
        num_fewshot = task.num_fewshot
    task.check_fewshot(num_fewshot)
    if task.source == "yaml":
        from toolkit.tasks.lm_eval_yaml import load_yaml_examples

        path, examples = load_yaml_examples(task, num_fewshot, fewshot_seed)
        return TaskData(task, path, tuple(examples), num_fewshot, tuple(range(len(examples))))
    path = task.path(data_dir)
    if not path.is_file():
        raise UserError(f"{path}: task file not found (set --data-dir or $TOOLKIT_DATA_DIR)")
    rows = _read_jsonl(path)
    examples = [parse_row(task, obj, _where(path, line), line) for line, obj in rows]
    if num_fewshot and task.source != "registry":
        examples = _user_fewshot(task, path, rows, examples, num_fewshot, fewshot_seed)
    elif num_fewshot:
        prefixes, shots_file = _fewshot_prefixes(task, data_dir, num_fewshot)
        for i, ((line, obj), ex) in enumerate(zip(rows, examples)):
            where = _where(path, line)
            subject = _string(obj, "subject", where)
            if subject not in prefixes:
                raise ConfigError("subject", f"{subject!r} has fewer than {num_fewshot} few-shot rows in {shots_file}", where)
            context = ex.requests[0][0]
            cut = context.find("\n\n") + 2
            context = context[:cut] + prefixes[subject] + context[cut:]
            examples[i] = replace(ex, requests=tuple((context, c) for _, c in ex.requests))
    return TaskData(task, path, tuple(examples), num_fewshot, tuple(range(len(examples))))


def labels_warning(data: TaskData, metrics: Sequence[str]) -> str | None:
    """The one warning line when rows carry several true answers (``labels``) but a metric that ignores
    them (``acc``, ``acc_norm``: they score ``label`` alone) is what is reported or searched on."""
    ignoring = [m for m in metrics if m in ("acc", "acc_norm")]
    if not ignoring or not data.has_labels:
        return None
    n = sum(e.has_labels for e in data.examples)
    verb = "scores" if len(ignoring) == 1 else "score"
    return (f"warning: {data.file}: {n} rows carry labels (several true answers), but {' and '.join(ignoring)} "
            f"{verb} only each row's label; mc2 scores every true answer (--metric mc2 in toolkit search)")
