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

**Modules.** :mod:`~toolkit.tasks.registry` (:class:`Task`, the registry, :func:`get_task`),
:mod:`~toolkit.tasks.examples` (:class:`Example`, :class:`TaskData` and its parts),
:mod:`~toolkit.tasks.loading` (common-schema rows, :func:`load_task`), :mod:`~toolkit.tasks.lm_eval_yaml`
with :mod:`~toolkit.tasks.lm_eval_docs` and :mod:`~toolkit.tasks.data_files` (lm-eval task YAMLs),
:mod:`~toolkit.tasks.fewshot` (lm-eval's samplers), :mod:`~toolkit.tasks.metrics` (acc, acc_norm, mc2).
"""

from toolkit.tasks.examples import PARTS, Example, TaskData, split_positions
from toolkit.tasks.loading import labels_warning, load_task, parse_row
from toolkit.tasks.registry import (FEWSHOT_SEED, REGISTRY, SAMPLERS, SCORINGS, SOURCES, TASK_FILE_SUFFIXES, TASK_VERSION,
                                    Task, find_task_file, get_task, list_tasks, task_name_for)

__all__ = ["FEWSHOT_SEED", "PARTS", "REGISTRY", "SAMPLERS", "SCORINGS", "SOURCES", "TASK_FILE_SUFFIXES", "TASK_VERSION",
           "Example", "Task", "TaskData", "find_task_file", "get_task", "labels_warning", "list_tasks", "load_task",
           "parse_row", "split_positions", "task_name_for"]
