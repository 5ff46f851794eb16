"""lm-evaluation-harness task YAMLs of the ``multiple_choice`` type, read as data: nothing in them runs.

A user's task definition in lm-eval's format (``lm_eval/config/task.py`` ``TaskConfig``, 0.4.13) becomes a
:class:`~toolkit.tasks.Task` whose examples are the requests lm-eval would build for it::

    task: my_arc
    dataset_path: json                    # json (JSON array or JSONL), csv or parquet
    dataset_kwargs:
      data_files: {train: train.jsonl, test: test.jsonl}   # relative: the YAML's folder, the current folder, the data directory
    test_split: test
    fewshot_split: train
    doc_to_text: "Question: {{question}}\\nAnswer:"
    doc_to_choice: "{{choices.text}}"
    doc_to_target: "{{choices.label.index(answerKey)}}"
    metric_list: [{metric: acc}, {metric: acc_norm}]

**Semantics, as lm-eval's** (``lm_eval/api/task.py`` ``ConfigurableTask``): a ``doc_to_*`` string that names
a column is that column; otherwise it is a Jinja template rendered with the row's fields (lm-eval's
environment: ``StrictUndefined``, trailing newlines kept, a ``regex_replace`` filter). A rendered
``doc_to_text`` / ``doc_to_target`` of digits is an index (when ``doc_to_choice`` is set), a rendered
``doc_to_target`` of ``[...]`` a literal list (several true choices: ``acc`` counts any of them), a rendered
``doc_to_choice`` a literal list. The context is ``description + shots + doc_to_text``, each shot
``text + target_delimiter + answer + fewshot_delimiter`` (``fewshot_config`` may override each part);
the request of choice ``c`` is ``(context, target_delimiter + c)``, ``acc_norm`` divides by ``len(c)``.
The evaluated split is ``test_split``, else ``validation_split``; the shots come from ``fewshot_split``
(or ``fewshot_config.split`` / ``.samples``), else the training, validation or test split, drawn by
:mod:`toolkit.tasks.fewshot`; the evaluated row is left out when the few-shot split is the test split.
``include`` merges another YAML (relative to this one) under this one's keys, as lm-eval does.

**Refused, with one line naming the file and line**: ``!function`` and every key that would run the
file's code or fetch something (``process_docs``, ``process_results``, ``custom_dataset``, ``class``,
``use_prompt``, ``filter_list``, ``unsafe_code``), other output types, multimodal and chat keys, and
unknown keys (lm-eval refuses those too). Templates render in Jinja's immutable sandbox. ``mc2`` in
``metric_list`` scores the probability mass on the choices of a list ``doc_to_target`` (lm-eval's own
TruthfulQA MC2 needs a ``process_results`` function; the registered ``truthfulqa_mc2`` is the way to it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.fileio import expand_user
from toolkit.tasks.data_files import read_rows
from toolkit.tasks.lm_eval_docs import Docs, gold_choices, render
from toolkit.tasks.metrics import METRICS

# Keys of lm-eval's TaskConfig this reader uses, and those it accepts without effect (naming, grouping,
# decontamination, bookkeeping). Everything else is refused: lm-eval's own TaskConfig rejects unknown keys.
USED = {"task", "dataset_path", "dataset_kwargs", "training_split", "validation_split", "test_split",
        "fewshot_split", "fewshot_config", "doc_to_text", "doc_to_choice", "doc_to_target", "description",
        "target_delimiter", "fewshot_delimiter", "num_fewshot", "metric_list", "output_type", "repeats"}
IGNORED = {"tag", "task_alias", "dataset_name", "should_decontaminate", "doc_to_decontamination_query", "metadata"}
REFUSED = {
    "process_docs": "a Python function that would run from the task file",
    "process_results": "a Python function that would run from the task file (mc2: use metric mc2 with a list "
                       "doc_to_target, or the registered truthfulqa_mc2)",
    "custom_dataset": "a Python function that would run from the task file",
    "class": "a Python class that would run from the task file",
    "use_prompt": "a promptsource template, fetched from a hub",
    "filter_list": "filters apply to generated text; multiple-choice tasks have none",
    "unsafe_code": "this task runs code",
    "doc_to_image": "multimodal tasks are not supported",
    "doc_to_audio": "multimodal tasks are not supported",
    "gen_prefix": "chat-style answer prefixes are not supported",
    "generation_kwargs": "a generate_until setting; only multiple_choice tasks are supported",
    "group": "a group of tasks; pass one task's YAML",
}
FEWSHOT_KEYS = {"sampler", "split", "samples", "doc_to_text", "doc_to_choice", "doc_to_target",
                "fewshot_delimiter", "target_delimiter"}
BUILDERS = ("json", "csv", "parquet")
_INCLUDE_DEPTH = 16


# -- YAML: safe, strict, with line numbers ------------------------------------------------------------
class _Problem(Exception):
    def __init__(self, line: int, field: str, problem: str):
        super().__init__(problem)
        self.line, self.field, self.problem = line, field, problem


class _Loader(yaml.SafeLoader):
    """yaml's SafeLoader, refusing ``!function`` by name and duplicate keys (later keys would win silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _Problem(key_node.start_mark.line + 1, str(key), f"duplicate key (first on line {seen[key]})")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _refuse_function(loader: _Loader, node: yaml.Node):
    raise _Problem(node.start_mark.line + 1, "!function",
                   f"{node.value!r}: refused, nothing from a task file executes (write the logic as a Jinja template, "
                   "or convert the data to the common JSONL schema)")


_Loader.add_constructor("!function", _refuse_function)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """(mapping, line of each top-level key) of one YAML file; one-line errors naming file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read task YAML ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason})") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except _Problem as exc:
        raise ConfigError(exc.field, exc.problem, f"{path}:{exc.line}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a task definition (a YAML mapping), got {type(data).__name__}")
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value}
    return data, lines


@dataclass(frozen=True)
class _Config:
    """A task YAML with its includes merged: the values, and where each top-level key was written."""

    values: dict[str, Any]
    where: dict[str, str]  # key -> "file:line"
    path: Path  # the YAML the user named


def _merged(path: Path, depth: int = 0, chain: tuple[Path, ...] = ()) -> _Config:
    data, lines = _read_yaml(path)
    where = {k: f"{path}:{lines.get(k, 1)}" for k in data}
    if "include" not in data:
        return _Config(data, where, path)
    inc = data.pop("include")
    includes = inc if isinstance(inc, list) else [inc]  # lm-eval: one file or a list, merged in order
    if not includes or not all(isinstance(i, str) and i for i in includes):
        raise ConfigError("include", f"expected a file name or a list of them, got {str(inc)[:60]}", where["include"])
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name in includes:
        target = (path.parent / expand_user(name)).resolve()
        if target in chain or target == path.resolve() or depth >= _INCLUDE_DEPTH:
            raise ConfigError("include", f"{name}: includes itself (a cycle)", where["include"])
        if not target.is_file():
            raise ConfigError("include", f"{name}: file not found next to the YAML", where["include"])
        base = _merged(target, depth + 1, chain + (path.resolve(),))
        values.update(base.values)
        origins.update(base.where)
    where.pop("include")
    return _Config({**values, **data}, {**origins, **where}, path)


# -- checked fields ----------------------------------------------------------------------------------
def _check_keys(cfg: _Config) -> None:
    for key, where in cfg.where.items():
        if key in REFUSED:
            raise ConfigError(key, f"refused: {REFUSED[key]}", where)
        if key not in USED and key not in IGNORED:
            raise ConfigError(key, "unknown key of an lm-eval task (see lm_eval/config/task.py TaskConfig)", where)


def _opt_str(cfg: _Config, key: str, default: str | None = None) -> str | None:
    v = schema.get(cfg.values, key, schema.optional(schema.string()), cfg.where.get(key, str(cfg.path)), default)
    return v


def _template(v: Any, key: str, where: str, allow: tuple[type, ...] = (str,)) -> Any:
    if v is None or isinstance(v, bool) or not isinstance(v, allow):
        names = " or ".join(t.__name__ for t in allow)
        raise ConfigError(key, f"expected {names}, got {type(v).__name__}", where)
    return v


@dataclass(frozen=True)
class YamlSpec:
    """What :func:`load_yaml_examples` needs from a task YAML, checked when the task is read."""

    path: Path
    builder: str
    files: Mapping[str, tuple[Path, ...]]  # split -> data files
    eval_split: str
    fewshot_split: str | None  # the split the shots come from (None: fewshot_samples)
    fewshot_samples: tuple[dict, ...] | None
    fewshot_sampler: str
    exclude_self: bool  # lm-eval leaves the evaluated row out when the few-shot split is the test split
    doc_to_text: Any
    doc_to_choice: Any
    doc_to_target: Any
    fs_doc_to_text: Any
    fs_doc_to_choice: Any
    fs_doc_to_target: Any
    description: str
    target_delimiter: str
    fewshot_delimiter: str
    fs_target_delimiter: str
    fs_fewshot_delimiter: str
    where: Mapping[str, str] = field(default_factory=dict)


def _data_files(cfg: _Config, data_dir: str | os.PathLike | None) -> dict[str, tuple[Path, ...]]:
    where = cfg.where.get("dataset_kwargs", str(cfg.path))
    kwargs = cfg.values.get("dataset_kwargs")
    if not isinstance(kwargs, dict) or "data_files" not in kwargs:
        raise ConfigError("dataset_kwargs.data_files", "missing: point it at local JSON/JSONL/CSV/Parquet files "
                          "(nothing is downloaded)", where)
    extra = set(kwargs) - {"data_files"}
    if extra:
        raise ConfigError(f"dataset_kwargs.{sorted(extra)[0]}", "not supported (only data_files)", where)
    raw = kwargs["data_files"]
    if isinstance(raw, (str, list)):
        raw = {"train": raw}  # datasets' rule: files without a split name are the train split
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("dataset_kwargs.data_files", "expected a file, a list of files or {split: files}", where)
    bases = [cfg.path.parent, Path.cwd()] + ([Path(data_dir)] if data_dir is not None else [])
    out = {}
    for split, files in raw.items():
        names = [files] if isinstance(files, str) else files
        if not isinstance(names, list) or not names or not all(isinstance(f, str) and f for f in names):
            raise ConfigError(f"dataset_kwargs.data_files.{split}", "expected a file name or a list of them", where)
        paths = []
        for name in names:
            p = expand_user(name)
            found = [p] if p.is_absolute() else [b / p for b in bases]
            hit = next((c for c in found if c.is_file()), None)
            if hit is None:
                looked = ", ".join(str(c.parent) for c in found)
                raise ConfigError(f"dataset_kwargs.data_files.{split}", f"{name}: not found (looked in {looked})", where)
            paths.append(hit.resolve())
        out[str(split)] = tuple(paths)
    return out


def read_task_yaml(path: Path, data_dir: str | os.PathLike | None = None):
    """The :class:`~toolkit.tasks.Task` an lm-eval task YAML defines (checked; its data is read later)."""
    from toolkit.tasks import Task

    cfg = _merged(Path(path))
    _check_keys(cfg)
    w = lambda k: cfg.where.get(k, str(cfg.path))  # noqa: E731
    name = cfg.values.get("task")
    if not isinstance(name, str) or not name:
        raise ConfigError("task", "missing: the task's name (a string)", w("task"))
    out_type = cfg.values.get("output_type", "generate_until")
    if out_type != "multiple_choice":
        raise ConfigError("output_type", f"{out_type!r} is not supported (only multiple_choice)", w("output_type"))
    if cfg.values.get("repeats", 1) != 1:
        raise ConfigError("repeats", "only 1 is supported for multiple_choice", w("repeats"))
    builder = _opt_str(cfg, "dataset_path")
    if builder not in BUILDERS:
        raise ConfigError("dataset_path", f"{builder!r}: must be one of {', '.join(BUILDERS)} (local files through "
                          "dataset_kwargs.data_files; nothing is downloaded)", w("dataset_path"))
    files = _data_files(cfg, data_dir)
    splits = {k: _opt_str(cfg, k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")}
    eval_split = splits["test_split"] or splits["validation_split"]
    if eval_split is None:
        raise ConfigError("test_split", "neither test_split nor validation_split is set: nothing to evaluate", str(cfg.path))
    for key, split in splits.items():
        if split is not None and split not in files and (split == eval_split or key == "fewshot_split"):
            raise ConfigError(key, f"{split!r} has no files in dataset_kwargs.data_files (it has {', '.join(files)})", w(key))
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target"):
        if key not in cfg.values:
            raise ConfigError(key, "missing (a multiple_choice task needs doc_to_text, doc_to_choice and doc_to_target)", str(cfg.path))
    text = _template(cfg.values["doc_to_text"], "doc_to_text", w("doc_to_text"))
    choice = _template(cfg.values["doc_to_choice"], "doc_to_choice", w("doc_to_choice"), (str, list, dict))
    target = _template(cfg.values["doc_to_target"], "doc_to_target", w("doc_to_target"), (str, int, list))
    tdel = _template(cfg.values.get("target_delimiter", " "), "target_delimiter", w("target_delimiter"))
    fdel = _template(cfg.values.get("fewshot_delimiter", "\n\n"), "fewshot_delimiter", w("fewshot_delimiter"))
    description = _opt_str(cfg, "description", "") or ""

    fs = cfg.values.get("fewshot_config") or {}
    if not isinstance(fs, dict):
        raise ConfigError("fewshot_config", f"expected a mapping, got {type(fs).__name__}", w("fewshot_config"))
    for k in fs:
        if k not in FEWSHOT_KEYS:
            why = "refused: a Python function" if k == "process_docs" else "not supported"
            raise ConfigError(f"fewshot_config.{k}", why, w("fewshot_config"))
    # A null in fewshot_config inherits the task's own value, as a missing key does.
    fs = {k: v for k, v in fs.items() if v is not None}
    main_value = {"doc_to_text": text, "doc_to_choice": choice, "doc_to_target": target,
                  "target_delimiter": tdel, "fewshot_delimiter": fdel}
    allowed = {"doc_to_text": (str,), "doc_to_choice": (str, list, dict), "doc_to_target": (str, int, list),
               "target_delimiter": (str,), "fewshot_delimiter": (str,), "split": (str,), "sampler": (str,)}
    for k, types in allowed.items():
        if k in fs:
            _template(fs[k], f"fewshot_config.{k}", w("fewshot_config"), types)
    fs_value = {k: fs.get(k, v) for k, v in main_value.items()}
    sampler = fs.get("sampler", "default")
    if sampler not in ("default", "first_n"):
        raise ConfigError("fewshot_config.sampler", f"{sampler!r}: one of default, first_n", w("fewshot_config"))
    fs_split = fs.get("split", splits["fewshot_split"])
    samples = fs.get("samples")
    if fs_split is None and samples is not None:
        if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
            raise ConfigError("fewshot_config.samples", "expected a list of rows (mappings)", w("fewshot_config"))
        samples = tuple(samples)
    else:
        samples = None
    if fs_split is not None and fs_split not in files:
        raise ConfigError("fewshot_config.split", f"{fs_split!r} has no files in dataset_kwargs.data_files", w("fewshot_config"))
    pool_split = fs_split
    if pool_split is None and samples is None:  # lm-eval's rule: training, else validation, else test docs
        pool_split = next((s for s in (splits["training_split"], splits["validation_split"], splits["test_split"])
                           if s is not None), None)

    metrics = []
    ml = cfg.values.get("metric_list")
    if ml is None:
        metrics = ["acc", "acc_norm"]  # lm-eval's default for multiple_choice (DEFAULT_METRIC_REGISTRY)
        hib = {"acc": True, "acc_norm": True}
    else:
        if not isinstance(ml, list) or not ml:
            raise ConfigError("metric_list", "expected a list of {metric: ...}", w("metric_list"))
        hib = {}
        for i, m in enumerate(ml):
            if not isinstance(m, dict) or not isinstance(m.get("metric"), str):
                raise ConfigError(f"metric_list[{i}].metric", "missing (a metric name)", w("metric_list"))
            name_m = m["metric"]
            if name_m not in METRICS:
                raise ConfigError(f"metric_list[{i}].metric", f"{name_m!r} is not supported (one of {', '.join(METRICS)})", w("metric_list"))
            if m.get("aggregation", "mean") != "mean":
                raise ConfigError(f"metric_list[{i}].aggregation", "only mean is supported", w("metric_list"))
            extra = set(m) - {"metric", "aggregation", "higher_is_better"}
            if extra:
                raise ConfigError(f"metric_list[{i}].{sorted(extra)[0]}", "not supported", w("metric_list"))
            hb = m.get("higher_is_better", True)
            if not isinstance(hb, bool):
                raise ConfigError(f"metric_list[{i}].higher_is_better", "expected true or false", w("metric_list"))
            metrics.append(name_m)
            hib[name_m] = hb
    num_fewshot = cfg.values.get("num_fewshot") or 0
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise ConfigError("num_fewshot", f"expected a non-negative integer, got {num_fewshot!r}", w("num_fewshot"))

    spec = YamlSpec(
        path=cfg.path.resolve(), builder=builder, files=files, eval_split=eval_split, fewshot_split=pool_split,
        fewshot_samples=samples, fewshot_sampler=sampler, exclude_self=fs_split == splits["test_split"],
        doc_to_text=text, doc_to_choice=choice, doc_to_target=target,
        fs_doc_to_text=fs_value["doc_to_text"], fs_doc_to_choice=fs_value["doc_to_choice"],
        fs_doc_to_target=fs_value["doc_to_target"], description=description,
        target_delimiter=tdel, fewshot_delimiter=fdel, fs_target_delimiter=fs_value["target_delimiter"],
        fs_fewshot_delimiter=fs_value["fewshot_delimiter"], where=dict(cfg.where),
    )
    # lm-eval never overrides a num_fewshot the YAML sets to 0 ("Manual configuration will be ignored"): the
    # toolkit refuses another value instead of ignoring it.
    fixed_zero = "num_fewshot" in cfg.values and num_fewshot == 0
    return Task(name, str(spec.path), metrics=tuple(metrics), higher_is_better=hib, split=eval_split,
                fewshot_options=(0,) if fixed_zero else None, fewshot_sampler=sampler, target_delimiter=tdel, fewshot_delimiter=fdel,
                num_fewshot=num_fewshot, source="yaml", spec=spec, description=f"lm-eval YAML {spec.path}")


def portable_definition(path: Path, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The task YAML as lm-eval itself reads it from any folder: ``include`` merged, every
    ``dataset_kwargs.data_files`` entry an absolute path (found as :func:`read_task_yaml` finds it).
    Checked first, so nothing refused reaches it. For cross-checks against lm-eval (``benchmarks/evaluator.py``).

    lm-eval loads every split a YAML names when the task is built, even a zero-shot task's training split
    (for its few-shot sampler), and stops with ``KeyError`` when it has no files; the toolkit reads a split
    only when it is used. So a split named but without files (lm-eval's own arc_easy.yaml pointed at a
    local test file names ``train`` and ``validation`` too) is set to null here: lm-eval then evaluates the
    same documents, and a few-shot prompt needing that split is an error on both sides."""
    spec = read_task_yaml(path, data_dir).spec
    cfg = _merged(Path(path))
    values = dict(cfg.values)
    values["dataset_kwargs"] = {"data_files": {split: [str(p) for p in paths] for split, paths in spec.files.items()}}
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        if values.get(key) is not None and values[key] not in spec.files:
            values[key] = None
    return values


def _split_rows(spec: YamlSpec, split: str) -> list[tuple[str, dict]]:
    """("file:line", row) of every row of ``split``; missing columns are None, as in a datasets table."""
    rows = [(f"{p}:{n}", r) for p in spec.files[split] for n, r in read_rows(p, spec.builder)]
    if not rows:
        raise UserError(f"{spec.path}: split {split!r} has no rows")
    keys: dict[str, None] = {}
    for _, r in rows:
        keys.update(dict.fromkeys(r))
    return [(w, {k: r.get(k) for k in keys}) for w, r in rows]


def _shot(docs: Docs, spec: YamlSpec, doc: dict, where: str) -> str:
    """One few-shot block: text + target delimiter + answer + few-shot delimiter (lm-eval's build_qa_turn)."""
    q = docs.text(doc, spec.fs_doc_to_text, where)
    if not isinstance(q, str):
        raise ConfigError("doc_to_text", "gave an index: multiple-input tasks are not supported", where)
    c = docs.choice(doc, spec.fs_doc_to_choice, where) if spec.fs_doc_to_choice else None
    a = docs.target(doc, spec.fs_doc_to_target, where)
    if a is None or a == "":
        return q
    answer = c[a] if (c and isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(c)) else (
        a[0] if isinstance(a, list) and a else a)
    if not isinstance(answer, str):
        raise ConfigError("doc_to_target", f"few-shot answer {answer!r} is not text", where)
    return q + spec.fs_target_delimiter + answer + spec.fs_fewshot_delimiter


def load_yaml_examples(task, num_fewshot: int, seed: int):
    """(the evaluated data file, the examples) of a YAML task, with ``num_fewshot`` shots each."""
    from toolkit.tasks import Example
    from toolkit.tasks.fewshot import sample_shots

    spec: YamlSpec = task.spec
    rows = _split_rows(spec, spec.eval_split)
    docs = Docs(frozenset(rows[0][1]), True)
    shots: list[list[dict]] = [[] for _ in rows]
    if num_fewshot:
        if spec.fewshot_samples is not None:
            pool, pool_where = list(spec.fewshot_samples), f"{spec.path}: fewshot_config.samples"
        elif spec.fewshot_split is not None:
            if spec.fewshot_split not in spec.files:
                raise UserError(f"{spec.path}: num_fewshot {num_fewshot}: the shots come from split "
                                f"{spec.fewshot_split!r} (lm-eval's default: training, else validation, else test "
                                "split), which has no files in dataset_kwargs.data_files; add them or set fewshot_split")
            pool = [r for _, r in _split_rows(spec, spec.fewshot_split)]
            pool_where = f"{spec.path}: split {spec.fewshot_split}"
        else:
            raise UserError(f"{spec.path}: num_fewshot {num_fewshot} needs a few-shot split (fewshot_split) or rows")
        shots = sample_shots(pool, [r for _, r in rows], num_fewshot, seed, spec.fewshot_sampler,
                             exclude_self=spec.exclude_self, where=pool_where)
    examples = []
    for i, ((where, doc), doc_shots) in enumerate(zip(rows, shots)):
        q = docs.text(doc, spec.doc_to_text, where)
        if not isinstance(q, str):
            raise ConfigError("doc_to_text", "gave an index: multiple-input tasks (several contexts, one "
                              "continuation) are not supported; use a common-schema file with partial scoring", where)
        choices = docs.choice(doc, spec.doc_to_choice, where)
        gold = gold_choices(docs.target(doc, spec.doc_to_target, where), choices, where)
        if "mc2" in task.metrics and not isinstance(gold, tuple):
            raise ConfigError("doc_to_target", "mc2 needs several true choices: a list of indices", where)
        desc = ""
        if spec.description:
            desc = doc[spec.description] if spec.description in doc else render(spec.description, doc, "description", where)
            desc = "" if desc is None else str(desc)
        shot_where = f"{pool_where if num_fewshot else where} (a few-shot row of {where})"
        context = desc + "".join(_shot(docs, spec, s, shot_where) for s in doc_shots) + q
        golds = gold if isinstance(gold, tuple) else ()
        label = golds[0] if golds else gold
        file, line = where.rsplit(":", 1)
        examples.append(Example(f"{task.name}-{i}", tuple((context, spec.target_delimiter + c) for c in choices),
                                tuple(max(len(c), 1) for c in choices), label, int(line), golds,
                                multiple_target=bool(golds), file=file))
    return spec.files[spec.eval_split][0], examples
