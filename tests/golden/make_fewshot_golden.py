"""Golden few-shot prompts from lm-evaluation-harness itself, for ``tests/test_user_tasks.py``.

The test builds the same tasks from :data:`CASES` with the toolkit and compares its contexts with the
strings this script printed (pasted into the test as ``GOLDEN``). Regenerate them with lm-eval 0.4.13 in
its own virtualenv (see ``benchmarks/evaluator.py``) after changing a case::

    HF_DATASETS_OFFLINE=1 /work/lmeval-venv/bin/python tests/golden/make_fewshot_golden.py

Each case is a folder of data files and one task YAML; lm-eval builds its requests exactly as
``simple_evaluate`` does (``set_fewshot_seed``, then ``build_all_requests``), and the script prints, per
case, every evaluated document's context (the first request's; all of a document's requests share it).
Only the standard library, ``yaml`` and ``lm_eval`` are imported: the toolkit need not be installed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

# Synthetic rows in the Hugging Face layout of allenai/ai2_arc (what lm-eval's arc_easy.yaml reads).
_QA = [
    ("What do plants need to make food?", ["sunlight", "sand", "noise", "plastic"], "A"),
    ("Which is a mammal?", ["shark", "whale", "trout", "squid"], "B"),
    ("What is frozen water called?", ["steam", "vapor", "ice", "dew"], "C"),
    ("Which planet is closest to the Sun?", ["Mars", "Venus", "Earth", "Mercury"], "D"),
    ("What force pulls objects toward Earth?", ["gravity", "magnetism", "friction", "tension"], "A"),
    ("Which organ pumps blood?", ["lung", "heart", "liver", "kidney"], "B"),
    ("What gas do animals exhale?", ["oxygen", "helium", "carbon dioxide", "neon"], "C"),
    ("Which material conducts electricity best?", ["wood", "rubber", "glass", "copper"], "D"),
    ("What is the boiling point of water at sea level in Celsius?", ["100", "50", "0", "212"], "A"),
    ("Which part of a plant absorbs water?", ["flower", "roots", "seed", "bark"], "B"),
    ("What causes day and night?", ["the Moon", "clouds", "Earth's rotation", "tides"], "C"),
    ("Which is a renewable resource?", ["coal", "oil", "natural gas", "wind"], "D"),
]


def arc_row(i: int) -> dict:
    q, texts, key = _QA[i]
    return {"id": f"q{i}", "question": q, "choices": {"text": texts, "label": ["A", "B", "C", "D"]}, "answerKey": key}


def common_row(i: int) -> dict:
    """The same question in the toolkit's common schema (lm-eval's arc_easy prompt, choices with the delimiter)."""
    q, texts, key = _QA[i]
    return {"id": f"q{i}", "context": f"Question: {q}\nAnswer:", "choices": [" " + t for t in texts],
            "label": "ABCD".index(key)}


TRAIN, TEST = range(0, 8), range(8, 12)
_ARC = {"doc_to_text": "Question: {{question}}\nAnswer:", "doc_to_target": "{{choices.label.index(answerKey)}}",
        "doc_to_choice": "{{choices.text}}", "output_type": "multiple_choice", "dataset_path": "json"}

# name -> (files: {file name: rows}, the YAML's keys besides task/data_files, data_files, fewshot seed).
# The jsonl_* cases are the YAML benchmarks/evaluator.py writes for a common-schema file.
CASES = {
    "yaml_train": ({"train.jsonl": [arc_row(i) for i in TRAIN], "test.jsonl": [arc_row(i) for i in TEST]},
                   {**_ARC, "training_split": "train", "test_split": "test", "num_fewshot": 3},
                   {"train": "train.jsonl", "test": "test.jsonl"}, 1234),
    "yaml_self": ({"test.jsonl": [arc_row(i) for i in range(12)]},
                  {**_ARC, "test_split": "test", "fewshot_split": "test", "num_fewshot": 2},
                  {"test": "test.jsonl"}, 1234),
    "yaml_first_n": ({"train.jsonl": [arc_row(i) for i in TRAIN], "test.jsonl": [arc_row(i) for i in TEST]},
                     {**_ARC, "test_split": "test", "fewshot_split": "train", "num_fewshot": 2,
                      "description": "Science questions.\n\n", "fewshot_delimiter": "\n###\n",
                      "fewshot_config": {"sampler": "first_n"}},
                     {"train": "train.jsonl", "test": "test.jsonl"}, 1234),
    "jsonl_self": ({"items.jsonl": [common_row(i) for i in range(12)]},
                   {"doc_to_text": "context", "doc_to_choice": "lm_choices", "doc_to_target": "label",
                    "output_type": "multiple_choice", "dataset_path": "json", "test_split": "test",
                    "fewshot_split": "test", "num_fewshot": 3},
                   {"test": "items.jsonl"}, 7),
    "jsonl_file": ({"items.jsonl": [common_row(i) for i in TEST], "shots.jsonl": [common_row(i) for i in TRAIN]},
                   {"doc_to_text": "context", "doc_to_choice": "lm_choices", "doc_to_target": "label",
                    "output_type": "multiple_choice", "dataset_path": "json", "test_split": "test",
                    "fewshot_split": "train", "num_fewshot": 2},
                   {"test": "items.jsonl", "train": "shots.jsonl"}, 1234),
}


def lm_eval_rows(case: str, name: str, rows: list[dict]) -> list[dict]:
    """What lm-eval reads for a file: the common-schema cases' choices without the delimiter."""
    if not case.startswith("jsonl"):
        return rows
    return [{"id": r["id"], "context": r["context"], "lm_choices": [c[1:] for c in r["choices"]], "label": r["label"]}
            for r in rows]


def main() -> None:
    import yaml
    from lm_eval.tasks import TaskManager, get_task_dict

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (files, keys, data_files, seed) in CASES.items():
            folder = Path(tmp) / case
            folder.mkdir()
            for name, rows in files.items():
                (folder / name).write_text("".join(json.dumps(r) + "\n" for r in lm_eval_rows(case, name, rows)))
            cfg = {"task": f"golden_{case}", **keys,
                   "dataset_kwargs": {"data_files": {s: str(folder / f) for s, f in data_files.items()}}}
            (folder / "task.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            task = get_task_dict([cfg["task"]], TaskManager(include_path=str(folder)))[cfg["task"]]
            task.set_fewshot_seed(seed=seed)
            task.build_all_requests(rank=0, world_size=1)
            contexts: dict[int, str] = {}
            for inst in task.instances:
                contexts.setdefault(inst.doc_id, inst.arguments[0])
            out[case] = [contexts[i] for i in sorted(contexts)]
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
