"""Loading a task's examples: common-schema JSONL rows checked field by field (one-line errors naming the
file, line and field), lm-eval's few-shot prompts for them, and :func:`load_task` for every kind of task."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.tasks.examples import Example, TaskData
from toolkit.tasks.registry import FEWSHOT_SEED, Task, get_task


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
