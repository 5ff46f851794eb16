"""Task files a user would bring, made from the shared data: lm-eval's own arc_easy and piqa YAMLs pointed
at local copies of the data in the layout lm-eval reads (its Hugging Face datasets' columns), and a copy
of a registered task as a plain common-schema JSONL.

``benchmarks/evaluator.py --task`` cross-checks such files against lm-eval, and ``tests/test_user_tasks.py``
checks that the YAMLs give the registered tasks' exact requests. Nothing here imports the toolkit.

* ``arc_easy``: the data directory's original ``arc_easy/ARC-Easy-Test.jsonl`` (AI2's layout: ``question``
  holds ``stem`` and ``choices``), rewritten to ``allenai/ai2_arc``'s columns ``id, question, choices
  {text, label}, answerKey``.
* ``piqa``: ``piqa/valid.jsonl`` (``goal, sol1, sol2``) with its labels from ``valid-labels.lst``, as the
  columns of lm-eval's ``baber/piqa`` (``goal, sol1, sol2, label``).

The YAMLs are lm-eval's (``lm_eval/tasks/arc/arc_easy.yaml`` and ``lm_eval/tasks/piqa/piqa.yaml`` at the
commit the data README names) with what a user changes to read local files: ``dataset_path: json``,
``dataset_name: null`` and ``dataset_kwargs.data_files``.

    python benchmarks/user_task_files.py --data-dir ../shared/data --limit 200 --out /tmp/my_tasks
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_METRICS = """\
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

ARC_EASY_YAML = """\
tag:
  - ai2_arc
task: arc_easy
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
training_split: train
validation_split: validation
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
should_decontaminate: true
doc_to_decontamination_query: "Question: {{{{question}}}}\\nAnswer:"
""" + _METRICS

PIQA_YAML = """\
task: piqa
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
training_split: train
validation_split: validation
test_split: null
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
should_decontaminate: true
doc_to_decontamination_query: goal
""" + _METRICS


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def arc_rows(data_dir: Path, name: str = "arc_easy", original: str = "ARC-Easy-Test.jsonl") -> list[dict]:
    """The ARC original in ``allenai/ai2_arc``'s columns, in file order."""
    out = []
    for r in _jsonl(Path(data_dir) / name / original):
        q = r["question"]
        out.append({"id": r["id"], "question": q["stem"],
                    "choices": {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]},
                    "answerKey": r["answerKey"]})
    return out


def piqa_rows(data_dir: Path) -> list[dict]:
    """PIQA's validation original with its labels, in ``baber/piqa``'s columns, in file order."""
    rows = _jsonl(Path(data_dir) / "piqa" / "valid.jsonl")
    labels = [int(x) for x in (Path(data_dir) / "piqa" / "valid-labels.lst").read_text().split()]
    if len(labels) != len(rows):
        raise ValueError(f"piqa: {len(rows)} rows but {len(labels)} labels")
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": y} for r, y in zip(rows, labels)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_yaml_task(folder: Path, task: str, data_dir: Path, limit: int | None = None) -> Path:
    """``folder/<task>.yaml`` (lm-eval's YAML, pointed at ``folder/<task>_data.jsonl``) and its data file:
    the first ``limit`` rows of the task (all when None). Returns the YAML's path."""
    rows, template = {"arc_easy": (arc_rows, ARC_EASY_YAML), "piqa": (piqa_rows, PIQA_YAML)}[task]
    data = write_jsonl(Path(folder) / f"{task}_data.jsonl", rows(data_dir)[:limit])
    yaml_path = Path(folder) / f"{task}.yaml"
    yaml_path.write_text(template.format(data=data.name), encoding="utf-8")
    return yaml_path


def write_common_copy(path: Path, registered_file: Path, limit: int | None = None) -> Path:
    """The first ``limit`` rows of a registered task's common-schema file, as a user's own file."""
    lines = [line for line in Path(registered_file).read_text(encoding="utf-8").splitlines() if line.strip()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines[:limit]), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--limit", type=int, default=None, help="first N rows of each (default: all)")
    ap.add_argument("--out", required=True, help="folder to write the files into")
    args = ap.parse_args()
    out, data = Path(args.out), Path(args.data_dir)
    for task in ("arc_easy", "piqa"):
        print(write_yaml_task(out, task, data, args.limit))
    print(write_common_copy(out / "my_arc_easy.jsonl", data / "arc_easy" / "test.jsonl", args.limit))


if __name__ == "__main__":
    main()
