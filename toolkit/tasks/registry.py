"""The task registry: typed :class:`Task` entries with lm-evaluation-harness names, prompts and metrics,
and :func:`get_task`, which also turns a user's JSONL or lm-eval YAML file into a Task (see
:mod:`toolkit.tasks` for the formats)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from toolkit.errors import ConfigError, UserError
from toolkit.fileio import expand_user
from toolkit.tasks.metrics import METRICS

TASK_VERSION = 1
SCORINGS = ("choices", "partial", "perplexity")
SOURCES = ("registry", "jsonl", "yaml")  # where a task's definition comes from
SAMPLERS = ("first_n", "default")  # lm-eval's few-shot samplers: the first k rows, or seeded random draws
FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed
_SPLIT_STEMS = {"test", "validation", "valid", "val", "dev", "train"}  # stems that name a split, not a task


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
