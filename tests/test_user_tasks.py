"""Tasks users bring (issue 19): multi-answer scoring (mc2), lm-eval task YAMLs read as data, few-shot
prompts drawn as lm-eval draws them, the registered openbookqa / truthfulqa tasks, and the chance guard."""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from toolkit.cli.main import main
from toolkit.errors import ConfigError, UserError
from toolkit.evaluate import Scorer, evaluate_task
from toolkit.models.tiny import byte_tokenizer
from toolkit.tasks import REGISTRY, get_task, labels_warning, load_task, task_name_for
from toolkit.tasks.metrics import at_chance, mc2

from test_engines import one_line_error

REPO = Path(__file__).resolve().parents[1]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GOLDEN_SCRIPT = _module(REPO / "tests" / "golden" / "make_fewshot_golden.py", "make_fewshot_golden")
USER_FILES = _module(REPO / "benchmarks" / "user_task_files.py", "user_task_files")


def _write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


class FixedScorer(Scorer):
    """An engine returning given log-likelihoods, one per request in order (what the metrics see)."""

    engine = "torch"

    def __init__(self, lls):
        self.lls = np.asarray(lls, dtype=np.float64)

    def score(self, requests, owners=None, on_batch=None):
        assert len(requests) == len(self.lls)
        return self.lls, 0


# -- mc2 ------------------------------------------------------------------------------------------------
# Three questions, true answers first (TruthfulQA's layout), with probabilities chosen so the score is
# easy by hand: mc2 = the probability mass on the true answers over the mass on all choices.
MC2_ROWS = [
    ({"context": "Q: one?\nA:", "choices": [" a", " b", " c"], "label": 0, "labels": [1, 1, 0]}, [0.5, 0.3, 0.2]),
    ({"context": "Q: two?\nA:", "choices": [" a", " b", " c", " d"], "label": 0, "labels": [1, 0, 0, 0]},
     [0.1, 0.2, 0.3, 0.4]),
    ({"context": "Q: three?\nA:", "choices": [" a", " b", " c", " d"], "label": 0, "labels": [1, 1, 1, 0]},
     [0.05, 0.05, 0.1, 0.2]),  # unnormalised: mass 0.2 of 0.4
]
MC2_BY_HAND = [0.8, 0.1, 0.5]


def lm_eval_mc2(lls, labels):
    """lm-eval 0.4.13's process_results_mc2 (lm_eval/tasks/truthfulqa/utils.py), restated."""
    split_idx = list(labels).index(0)
    p_true, p_false = np.exp(np.array(lls[:split_idx])), np.exp(np.array(lls[split_idx:]))
    p_true = p_true / (sum(p_true) + sum(p_false))
    return sum(p_true)


def test_mc2_on_a_hand_computed_file_equals_lm_evals_formula(tmp_path):
    path = _write(tmp_path / "mc2.jsonl", [r for r, _ in MC2_ROWS])
    task = replace(get_task(str(path)), metrics=("mc2",), higher_is_better={"mc2": True})
    lls = [math.log(p) for _, ps in MC2_ROWS for p in ps]
    r = evaluate_task(FixedScorer(lls), byte_tokenizer(), load_task(task), progress=False)
    formula = [lm_eval_mc2([math.log(p) for p in ps], row["labels"]) for row, ps in MC2_ROWS]
    assert formula == pytest.approx(MC2_BY_HAND, abs=1e-12)
    assert r.mc2 == pytest.approx(np.mean(formula), abs=1e-6)
    assert r.value("mc2") == r.mc2 and r.stderr("mc2") == pytest.approx(np.std(formula, ddof=1) / math.sqrt(3))
    assert [e.score("mc2") for e in r.per_example] == pytest.approx(MC2_BY_HAND, abs=1e-6)
    # acc scores each row's label alone: argmax of [0.5,0.3,0.2] is 0 (right), of the others 3 (wrong)
    assert r.acc == pytest.approx(1 / 3)
    assert r.chance["mc2"] == pytest.approx(np.mean([2 / 3, 1 / 4, 3 / 4]))
    assert r.to_dict()["mc2"] == r.mc2


def test_mc2_does_not_underflow_on_long_answers():
    """lm-eval's exp(ll) is 0/0 at ll=-800; the log-space form gives the same share as at ll=0."""
    assert mc2([-800.0, -800.0, -800.0 - math.log(2)], [0]) == pytest.approx(0.4)


@pytest.mark.parametrize("labels,problem", [
    ([1, 0], "labels: has 2 entries for 3 choices"),
    ([0, 0, 0], "labels: no true answer"),
    ([1, 2, 0], "labels[1]: expected 0 or 1, got 2"),
    ([1, True, 0], "labels[1]: expected 0 or 1, got True"),
    ("110", "labels: expected a list of 0/1"),
    ([0, 1, 0], "label: choice 0 is not one of the true answers"),
])
def test_malformed_labels_are_one_line_naming_file_and_line(tmp_path, capsys, labels, problem, model_must_not_load):
    good = {"context": "Q?\nA:", "choices": [" a", " b", " c"], "label": 0, "labels": [1, 0, 0]}
    path = _write(tmp_path / "items.jsonl", [good, good, {**good, "labels": labels}])
    rc = main(["eval", "--model", "smollm2-135m", "--task", str(path)])
    one_line_error(capsys, rc, f"{path}:3", problem)


def test_labels_read_by_a_metric_that_ignores_them_is_a_warning(tmp_path):
    path = _write(tmp_path / "tqa.jsonl", [r for r, _ in MC2_ROWS])
    data = load_task(get_task(str(path)))
    assert [e.true_choices for e in data.examples] == [(0, 1), (0,), (0, 1, 2)]
    warning = labels_warning(data, ["acc", "acc_norm"])
    assert warning.startswith(f"warning: {path}: 2 rows carry labels") and "\n" not in warning
    assert labels_warning(data, ["mc2"]) is None
    plain = _write(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "labels"} for r, _ in MC2_ROWS])
    assert labels_warning(load_task(get_task(str(plain))), ["acc"]) is None


# -- registered openbookqa / truthfulqa ------------------------------------------------------------------
def _tiny_data_dir(tmp_path) -> Path:
    root = tmp_path / "data"
    _write(root / "openbookqa" / "test.jsonl", [
        {"id": "o1", "context": "The sun is a", "choices": [" star", " planet", " moon", " comet"], "label": 0}])
    mc1 = {"id": "t1", "context": "Q: What is 2+2?\nA:", "choices": [" 4", " 5", " 22"], "label": 0}
    _write(root / "truthfulqa" / "validation.jsonl", [mc1])
    _write(root / "truthfulqa" / "validation_mc2.jsonl", [{**mc1, "choices": [" 4", " four", " 5"], "labels": [1, 1, 0]}])
    return root


def test_openbookqa_and_truthfulqa_are_registered_with_lm_evals_metrics(tmp_path):
    root = _tiny_data_dir(tmp_path)
    assert REGISTRY["openbookqa"].metrics == ("acc", "acc_norm")
    assert REGISTRY["truthfulqa_mc1"].metrics == ("acc",) and REGISTRY["truthfulqa_mc2"].metrics == ("mc2",)
    assert all(REGISTRY[n].higher_is_better[m] for n in ("openbookqa", "truthfulqa_mc1", "truthfulqa_mc2")
               for m in REGISTRY[n].metrics)
    for name in ("openbookqa", "truthfulqa_mc1", "truthfulqa_mc2"):
        assert len(load_task(name, root)) == 1
    assert load_task("truthfulqa_mc2", root).examples[0].golds == (0, 1)
    _write(root / "truthfulqa" / "validation_mc2.jsonl", [{"context": "Q", "choices": [" a", " b"], "label": 0}])
    with pytest.raises(ConfigError, match=r"validation_mc2.jsonl:1: labels: missing: truthfulqa_mc2 scores mc2"):
        load_task("truthfulqa_mc2", root)


def test_eval_reports_mc2_chance_and_tags_what_lm_eval_does_not_report(tmp_path, tiny_folder, capsys):
    root = _tiny_data_dir(tmp_path)
    assert main(["eval", "--model", str(tiny_folder), "--task", "truthfulqa_mc1,truthfulqa_mc2",
                 "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[3].strip(): line for line in out.splitlines() if line.count("│") >= 7}
    assert "acc_norm ↑ (not reported by lm-eval)" in out  # MC1's acc_norm
    mc2_row = next(line for line in out.splitlines() if "mc2 ↑" in line)
    assert "truthfulqa_mc2" in mc2_row and "0.6667" in mc2_row  # chance: 2 true of 3
    assert rows, out
    assert main(["eval", "--model", str(tiny_folder), "--task", "truthfulqa_mc2", "--data-dir", str(root), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["metrics"] == ["mc2"] and 0 <= r["mc2"] <= 1 and r["chance"]["mc2"] == pytest.approx(2 / 3)


# -- names, paths, --list ---------------------------------------------------------------------------------
def test_relative_task_paths_look_in_the_data_dir_after_the_current_folder(tmp_path, monkeypatch):
    root = _tiny_data_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    t = get_task("openbookqa/test.jsonl", root)
    assert Path(t.file) == (root / "openbookqa" / "test.jsonl").resolve() and t.name == "openbookqa/test"
    _write(tmp_path / "openbookqa" / "test.jsonl", [{"context": "c", "choices": [" a", " b"], "label": 1}])
    assert Path(get_task("openbookqa/test.jsonl", root).file) == (tmp_path / "openbookqa" / "test.jsonl").resolve()
    with pytest.raises(UserError, match="nowhere.jsonl: task file not found"):
        get_task("nowhere.jsonl", root)
    assert task_name_for(Path("/x/science_qa.jsonl")) == "science_qa"
    assert task_name_for(Path("/x/truthful/validation.jsonl")) == "truthful/validation"


def test_list_is_not_cut_in_a_pipe(capsys):
    assert main(["eval", "--list"]) == 0
    out = capsys.readouterr().out
    for t in REGISTRY.values():
        assert t.name in out and t.description in out, t.name


# -- lm-eval YAMLs ---------------------------------------------------------------------------------------
def test_lm_evals_arc_easy_and_piqa_yamls_give_the_registered_tasks_exact_requests(tmp_path, data_dir):
    for name in ("arc_easy", "piqa"):
        yaml_task = get_task(str(USER_FILES.write_yaml_task(tmp_path, name, data_dir)))
        assert yaml_task.name == name and yaml_task.source == "yaml" and yaml_task.metrics == ("acc", "acc_norm")
        ours, registered = load_task(yaml_task), load_task(name, data_dir)
        assert len(ours) == len(registered) == {"arc_easy": 2376, "piqa": 1838}[name]
        for a, b in zip(ours.examples, registered.examples):
            assert (a.requests, a.norm_lengths, a.label) == (b.requests, b.norm_lengths, b.label)


def _yaml(tmp_path, text: str, rows=None) -> Path:
    _write(tmp_path / "rows.jsonl", rows or [{"q": "Which is red?", "opts": ["apple", "sky"], "y": 0},
                                              {"q": "Which is blue?", "opts": ["grass", "sky"], "y": 1}])
    path = tmp_path / "task.yaml"
    path.write_text("task: mine\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: rows.jsonl\n"
                    "test_split: test\noutput_type: multiple_choice\n" + text)
    return path


BASIC = 'doc_to_text: "Q: {{q}}\\nA:"\ndoc_to_choice: opts\ndoc_to_target: y\n'


def test_a_yaml_task_builds_lm_evals_requests(tmp_path):
    data = load_task(get_task(str(_yaml(tmp_path, BASIC + 'target_delimiter: "=>"\n'))))
    assert data.task.name == "mine" and [e.label for e in data.examples] == [0, 1]
    assert data.examples[0].requests == (("Q: Which is red?\nA:", "=>apple"), ("Q: Which is red?\nA:", "=>sky"))
    assert data.examples[0].norm_lengths == (5, 3) and data.examples[1].line == 2


def test_a_split_over_several_files_names_each_rows_own_file(tmp_path):
    path = _yaml(tmp_path, BASIC)
    _write(tmp_path / "more.jsonl", [{"q": "Which is green?", "opts": ["grass", "sky"], "y": 0}])
    path.write_text(path.read_text().replace("    test: rows.jsonl\n", "    test: [rows.jsonl, more.jsonl]\n"))
    data = load_task(get_task(str(path)))
    assert len(data) == 3
    assert [Path(e.where(data.file)).name for e in data.examples] == ["rows.jsonl:1", "rows.jsonl:2", "more.jsonl:1"]


@pytest.mark.parametrize("text,where,problem", [
    ("doc_to_text: !function utils.doc_to_text\ndoc_to_choice: opts\ndoc_to_target: y\n", ":8", "!function"),
    (BASIC + "process_results: !function utils.process_results\n", ":11", "!function"),
    (BASIC + "process_docs: utils.process_docs\n", ":11", "process_docs: refused"),
    (BASIC + "class: my.Task\n", ":11", "class: refused"),
    (BASIC + "unsafe_code: true\n", ":11", "unsafe_code: refused"),
    (BASIC + "doc_to_textt: x\n", ":11", "doc_to_textt: unknown key"),
    (BASIC + "doc_to_target: q\n", ":11", "doc_to_target: duplicate key (first on line 10)"),
    (BASIC.replace("doc_to_choice: opts", "doc_to_choice: \"{{ opts.__class__.__mro__ }}\""), "rows.jsonl:1",
     "doc_to_choice: template failed"),
])
def test_yaml_code_and_bad_keys_are_refused_in_one_line(tmp_path, capsys, text, where, problem, model_must_not_load):
    path = _yaml(tmp_path, text)
    rc = main(["eval", "--model", "smollm2-135m", "--task", str(path)])
    err = one_line_error(capsys, rc, problem)
    assert where in err and ("rows.jsonl" in where or str(path) in err), err


def test_a_yaml_include_is_merged_under_its_keys_and_cannot_cycle(tmp_path):
    _write(tmp_path / "rows.jsonl", [{"q": "x?", "opts": ["a", "b"], "y": 1}])
    (tmp_path / "base.yaml").write_text("dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: rows.jsonl\n"
                                        "test_split: test\noutput_type: multiple_choice\n" + BASIC)
    (tmp_path / "child.yaml").write_text("include: base.yaml\ntask: child\ndoc_to_text: \"{{q}} ->\"\n")
    data = load_task(get_task(str(tmp_path / "child.yaml")))
    assert data.task.name == "child" and data.examples[0].requests[0] == ("x? ->", " a")
    (tmp_path / "base.yaml").write_text("include: child.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        get_task(str(tmp_path / "child.yaml"))


def test_a_yaml_include_list_merges_in_order_and_merge_keys_are_not_duplicates(tmp_path):
    _write(tmp_path / "rows.jsonl", [{"q": "x?", "opts": ["a", "b"], "y": 1}])
    (tmp_path / "data.yaml").write_text("dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: rows.jsonl\n"
                                        "test_split: test\noutput_type: multiple_choice\ntarget_delimiter: '='\n")
    (tmp_path / "prompt.yaml").write_text(BASIC + "target_delimiter: '~'\n")
    (tmp_path / "child.yaml").write_text("include: [data.yaml, prompt.yaml]\ntask: child\n")
    assert load_task(get_task(str(tmp_path / "child.yaml"))).examples[0].requests[0] == ("Q: x?\nA:", "~a")
    (tmp_path / "anchors.yaml").write_text(
        "include: data.yaml\ntask: anchored\nfewshot_config: &fs\n  sampler: first_n\n  target_delimiter: '+'\n"
        "metadata:\n  <<: *fs\n  sampler: default\n" + BASIC)
    assert load_task(get_task(str(tmp_path / "anchors.yaml"))).task.name == "anchored"


def test_yaml_data_in_csv_and_parquet_reads_as_the_json_does(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    rows = [{"q": "Which is red?", "a": "apple", "b": "sky", "y": 0}, {"q": "Which, blue?", "a": "grass", "b": "sky", "y": 1}]
    text = 'doc_to_text: "Q: {{q}}\\nA:"\ndoc_to_choice: "{{[a, b]}}"\ndoc_to_target: y\n'
    want = load_task(get_task(str(_yaml(tmp_path, text, rows)))).examples
    (tmp_path / "rows.csv").write_text('q,a,b,y\nWhich is red?,apple,sky,0\n"Which, blue?",grass,sky,1\n')
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    for builder, name in (("csv", "rows.csv"), ("parquet", "rows.parquet")):
        path = tmp_path / f"{builder}.yaml"
        path.write_text(_yaml(tmp_path, text, rows).read_text().replace("dataset_path: json", f"dataset_path: {builder}")
                        .replace("rows.jsonl", name))
        got = load_task(get_task(str(path))).examples
        assert [(e.requests, e.label) for e in got] == [(e.requests, e.label) for e in want], builder


def test_yaml_data_keeps_unicode_line_separators_multi_line_csv_fields_and_drops_a_bom(tmp_path):
    text = 'doc_to_text: "Q: {{q}}\\nA:"\ndoc_to_choice: "{{[a, b]}}"\ndoc_to_target: y\n'
    rows = [{"q": "Which\u2028is\x85red?", "a": "apple", "b": "sky", "y": 0}]
    ex = load_task(get_task(str(_yaml(tmp_path, text, rows)))).examples
    assert len(ex) == 1 and ex[0].requests[0][0] == "Q: Which\u2028is\x85red?\nA:"
    (tmp_path / "rows.csv").write_bytes('\ufeffq,a,b,y\n"two\nlines",apple,sky,1\n'.encode())
    path = tmp_path / "csv.yaml"
    path.write_text(_yaml(tmp_path, text).read_text().replace("dataset_path: json", "dataset_path: csv")
                    .replace("rows.jsonl", "rows.csv"))
    ex = load_task(get_task(str(path))).examples
    assert len(ex) == 1 and ex[0].requests[0] == ("Q: two\nlines\nA:", " apple") and ex[0].label == 1


def test_unreadable_yaml_data_and_unknown_home_folders_are_one_line(tmp_path, capsys, model_must_not_load):
    pytest.importorskip("pyarrow.parquet")
    text = _yaml(tmp_path, BASIC).read_text()
    (tmp_path / "rows.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    path = tmp_path / "pq.yaml"
    path.write_text(text.replace("dataset_path: json", "dataset_path: parquet").replace("rows.jsonl", "rows.parquet"))
    rc = main(["eval", "--model", "smollm2-135m", "--task", str(path)])
    one_line_error(capsys, rc, "rows.parquet: not a readable Parquet file")
    (tmp_path / "rows.csv").write_text("q,opts,y\n" + "x" * 200_000 + ",a,0\n")
    path.write_text(text.replace("dataset_path: json", "dataset_path: csv").replace("rows.jsonl", "rows.csv"))
    rc = main(["eval", "--model", "smollm2-135m", "--task", str(path)])
    one_line_error(capsys, rc, "rows.csv:", "not readable CSV")
    rc = main(["eval", "--model", "smollm2-135m", "--task", "~no-such-user-xyz/t.jsonl"])
    one_line_error(capsys, rc, "~no-such-user-xyz/t.jsonl: cannot expand '~'")
    path.write_text(text.replace("rows.jsonl", "~no-such-user-xyz/rows.jsonl"))
    rc = main(["eval", "--model", "smollm2-135m", "--task", str(path)])
    one_line_error(capsys, rc, "cannot expand '~'")


@pytest.mark.parametrize("text,problem", [
    (BASIC + "target_delimiter: null\n", "target_delimiter: expected str, got NoneType"),
    (BASIC + "fewshot_config:\n  split: [test]\n", "fewshot_config.split: expected str, got list"),
    (BASIC + "fewshot_config:\n  fewshot_delimiter: 3\n", "fewshot_config.fewshot_delimiter: expected str, got int"),
    (BASIC.replace("doc_to_text: \"Q: {{q}}\\nA:\"", "doc_to_text: \"{{ q | regex_replace('(', '') }}\""),
     "doc_to_text: template failed on this row (error"),
    (BASIC.replace("doc_to_text: \"Q: {{q}}\\nA:\"", "doc_to_text: \"{{ 1 // 0 }}\""),
     "doc_to_text: template failed on this row (ZeroDivisionError"),
    (BASIC.replace("doc_to_target: y", "doc_to_target: [1, 1]"), "a choice is listed twice"),
    (BASIC.replace("doc_to_target: y", "doc_to_target: \"\u00b2\""), "is neither a choice index nor one of the choices"),
    (BASIC + "num_fewshot: 1\nfewshot_config:\n  samples: [{q: x}]\n",
     "doc_to_choice: names the column 'opts', which this row does not have"),
])
def test_malformed_yaml_values_are_one_line_not_tracebacks(tmp_path, capsys, text, problem, model_must_not_load):
    rc = main(["eval", "--model", "smollm2-135m", "--task", str(_yaml(tmp_path, text))])
    one_line_error(capsys, rc, problem)


def test_a_null_in_fewshot_config_inherits_the_tasks_value(tmp_path):
    base = BASIC + "num_fewshot: 1\nfewshot_config:\n  sampler: first_n\n"
    want = load_task(get_task(str(_yaml(tmp_path, base)))).examples
    got = load_task(get_task(str(_yaml(tmp_path, base + "  doc_to_text: null\n  target_delimiter: null\n")))).examples
    assert [e.requests for e in got] == [e.requests for e in want]
    assert want[1].requests[0][0] == "Q: Which is red?\nA: apple\n\nQ: Which is blue?\nA:"


def test_a_yaml_that_fixes_num_fewshot_0_refuses_another(tmp_path):
    task = get_task(str(_yaml(tmp_path, BASIC + "num_fewshot: 0\n")))
    with pytest.raises(UserError, match="sets num_fewshot: 0, which lm-eval never overrides"):
        load_task(task, num_fewshot=1)


def test_a_yaml_list_target_counts_any_gold_choice(tmp_path):
    rows = [{"q": "Pick a fruit", "opts": ["apple", "rock", "pear"], "ys": [0, 2]}]
    task = get_task(str(_yaml(tmp_path, 'doc_to_text: "{{q}}"\ndoc_to_choice: opts\ndoc_to_target: ys\n', rows)))
    ex = load_task(task).examples[0]
    assert ex.golds == (0, 2) and ex.multiple_target and not ex.has_labels
    r = evaluate_task(FixedScorer([-5.0, -9.0, -1.0]), byte_tokenizer(), load_task(task), progress=False)
    assert r.acc == 1.0 and r.chance["acc"] == pytest.approx(2 / 3)  # pred 2 is a gold choice


# -- few-shot: lm-eval's own strings -------------------------------------------------------------------
# Printed by tests/golden/make_fewshot_golden.py (lm-eval 0.4.13); regenerate after changing a case.
GOLDEN = {
    'yaml_train': [
        'Question: Which material conducts electricity best?\nAnswer: copper\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: What is the boiling point of water at sea level in Celsius?\nAnswer:',
        'Question: Which is a mammal?\nAnswer: whale\n\nQuestion: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: What force pulls objects toward Earth?\nAnswer: gravity\n\nQuestion: Which part of a plant absorbs water?\nAnswer:',
        'Question: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which organ pumps blood?\nAnswer: heart\n\nQuestion: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: What causes day and night?\nAnswer:',
        'Question: Which is a mammal?\nAnswer: whale\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: What is frozen water called?\nAnswer: ice\n\nQuestion: Which is a renewable resource?\nAnswer:',
    ],
    'yaml_self': [
        'Question: Which material conducts electricity best?\nAnswer: copper\n\nQuestion: Which is a mammal?\nAnswer: whale\n\nQuestion: What do plants need to make food?\nAnswer:',
        'Question: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which is a mammal?\nAnswer:',
        "Question: What causes day and night?\nAnswer: Earth's rotation\n\nQuestion: Which is a mammal?\nAnswer: whale\n\nQuestion: What is frozen water called?\nAnswer:",
        'Question: Which organ pumps blood?\nAnswer: heart\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which planet is closest to the Sun?\nAnswer:',
        'Question: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which is a renewable resource?\nAnswer: wind\n\nQuestion: What force pulls objects toward Earth?\nAnswer:',
        "Question: What causes day and night?\nAnswer: Earth's rotation\n\nQuestion: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: Which organ pumps blood?\nAnswer:",
        'Question: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: Which material conducts electricity best?\nAnswer: copper\n\nQuestion: What gas do animals exhale?\nAnswer:',
        'Question: Which is a mammal?\nAnswer: whale\n\nQuestion: What is frozen water called?\nAnswer: ice\n\nQuestion: Which material conducts electricity best?\nAnswer:',
        'Question: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which material conducts electricity best?\nAnswer: copper\n\nQuestion: What is the boiling point of water at sea level in Celsius?\nAnswer:',
        'Question: Which planet is closest to the Sun?\nAnswer: Mercury\n\nQuestion: Which is a mammal?\nAnswer: whale\n\nQuestion: Which part of a plant absorbs water?\nAnswer:',
        'Question: Which material conducts electricity best?\nAnswer: copper\n\nQuestion: Which is a mammal?\nAnswer: whale\n\nQuestion: What causes day and night?\nAnswer:',
        "Question: What causes day and night?\nAnswer: Earth's rotation\n\nQuestion: Which is a mammal?\nAnswer: whale\n\nQuestion: Which is a renewable resource?\nAnswer:",
    ],
    'yaml_first_n': [
        'Science questions.\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n###\nQuestion: Which is a mammal?\nAnswer: whale\n###\nQuestion: What is the boiling point of water at sea level in Celsius?\nAnswer:',
        'Science questions.\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n###\nQuestion: Which is a mammal?\nAnswer: whale\n###\nQuestion: Which part of a plant absorbs water?\nAnswer:',
        'Science questions.\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n###\nQuestion: Which is a mammal?\nAnswer: whale\n###\nQuestion: What causes day and night?\nAnswer:',
        'Science questions.\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n###\nQuestion: Which is a mammal?\nAnswer: whale\n###\nQuestion: Which is a renewable resource?\nAnswer:',
    ],
    'jsonl_self': [
        'Question: Which organ pumps blood?\nAnswer: heart\n\nQuestion: What is frozen water called?\nAnswer: ice\n\nQuestion: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: What do plants need to make food?\nAnswer:',
        'Question: What is the boiling point of water at sea level in Celsius?\nAnswer: 100\n\nQuestion: Which is a renewable resource?\nAnswer: wind\n\nQuestion: Which organ pumps blood?\nAnswer: heart\n\nQuestion: Which is a mammal?\nAnswer:',
        'Question: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: What is the boiling point of water at sea level in Celsius?\nAnswer: 100\n\nQuestion: What is frozen water called?\nAnswer:',
        'Question: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which is a mammal?\nAnswer: whale\n\nQuestion: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: Which planet is closest to the Sun?\nAnswer:',
        'Question: Which is a mammal?\nAnswer: whale\n\nQuestion: Which planet is closest to the Sun?\nAnswer: Mercury\n\nQuestion: Which is a renewable resource?\nAnswer: wind\n\nQuestion: What force pulls objects toward Earth?\nAnswer:',
        'Question: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: Which organ pumps blood?\nAnswer:',
        "Question: Which planet is closest to the Sun?\nAnswer: Mercury\n\nQuestion: What causes day and night?\nAnswer: Earth's rotation\n\nQuestion: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: What gas do animals exhale?\nAnswer:",
        'Question: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: Which is a renewable resource?\nAnswer: wind\n\nQuestion: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: Which material conducts electricity best?\nAnswer:',
        'Question: Which planet is closest to the Sun?\nAnswer: Mercury\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: What is frozen water called?\nAnswer: ice\n\nQuestion: What is the boiling point of water at sea level in Celsius?\nAnswer:',
        'Question: What force pulls objects toward Earth?\nAnswer: gravity\n\nQuestion: What gas do animals exhale?\nAnswer: carbon dioxide\n\nQuestion: What is frozen water called?\nAnswer: ice\n\nQuestion: Which part of a plant absorbs water?\nAnswer:',
        'Question: Which is a mammal?\nAnswer: whale\n\nQuestion: Which part of a plant absorbs water?\nAnswer: roots\n\nQuestion: What force pulls objects toward Earth?\nAnswer: gravity\n\nQuestion: What causes day and night?\nAnswer:',
        "Question: What causes day and night?\nAnswer: Earth's rotation\n\nQuestion: What is frozen water called?\nAnswer: ice\n\nQuestion: Which is a mammal?\nAnswer: whale\n\nQuestion: Which is a renewable resource?\nAnswer:",
    ],
    'jsonl_file': [
        'Question: Which material conducts electricity best?\nAnswer: copper\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: What is the boiling point of water at sea level in Celsius?\nAnswer:',
        'Question: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which material conducts electricity best?\nAnswer: copper\n\nQuestion: Which part of a plant absorbs water?\nAnswer:',
        'Question: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which organ pumps blood?\nAnswer: heart\n\nQuestion: What causes day and night?\nAnswer:',
        'Question: Which is a mammal?\nAnswer: whale\n\nQuestion: What do plants need to make food?\nAnswer: sunlight\n\nQuestion: Which is a renewable resource?\nAnswer:',
    ],
}


def _build_case(tmp_path, case):
    import yaml

    files, keys, data_files, seed = GOLDEN_SCRIPT.CASES[case]
    for name, rows in files.items():
        _write(tmp_path / name, rows)
    if case.startswith("yaml"):
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump({"task": case, **keys, "dataset_kwargs": {"data_files": data_files}}))
        return load_task(get_task(str(path)), fewshot_seed=seed)
    task = get_task(str(tmp_path / data_files["test"]))
    if "train" in data_files:
        task = replace(task, fewshot_file=str(tmp_path / data_files["train"]))
    return load_task(task, num_fewshot=keys["num_fewshot"], fewshot_seed=seed)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_few_shot_prompts_equal_lm_evals_strings(tmp_path, case):
    data = _build_case(tmp_path, case)
    assert [e.requests[0][0] for e in data.examples] == GOLDEN[case]
    assert all(len({c for c, _ in e.requests}) == 1 for e in data.examples)


def test_few_shot_prompts_stay_with_their_example_in_any_subset(tmp_path):
    data = _build_case(tmp_path, "yaml_self")
    sub = data.select(5, seed=3)
    assert [e.requests[0][0] for e in sub.examples] == [GOLDEN["yaml_self"][i] for i in sub.indices]


def test_cli_few_shot_for_a_user_file(tmp_path, tiny_folder, capsys):
    files, keys, data_files, seed = GOLDEN_SCRIPT.CASES["jsonl_file"]
    for name, rows in files.items():
        _write(tmp_path / name, rows)
    out = tmp_path / "r.json"
    assert main(["eval", "--model", str(tiny_folder), "--task", str(tmp_path / "items.jsonl"), "--num-fewshot", "2",
                 "--fewshot-file", str(tmp_path / "shots.jsonl"), "--per-example", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    r = json.loads(out.read_text())["results"][0]
    assert r["num_fewshot"] == 2 and r["task"] == "items" and r["n"] == 4
    rc = main(["eval", "--model", str(tiny_folder), "--task", "arc_easy", "--num-fewshot", "2",
               "--fewshot-file", str(tmp_path / "shots.jsonl")])
    one_line_error(capsys, rc, "--fewshot-file: only for .jsonl task files; arc_easy")


# -- the chance guard ----------------------------------------------------------------------------------
def _at_chance_task(tmp_path) -> Path:
    """Every item asks the same thing with the same four letters; the labels cycle through them, so any
    model picks the same letter everywhere and scores exactly chance."""
    return _write(tmp_path / "guess.jsonl", [{"id": f"g{i}", "context": "Pick a letter.\nAnswer:",
                                              "choices": [" A", " B", " C", " D"], "label": i % 4} for i in range(200)])


def test_chance_is_the_expected_score_of_uniform_guessing(tmp_path):
    path = _write(tmp_path / "mixed.jsonl", [{"context": "c", "choices": [" a", " b"], "label": 0},
                                             {"context": "c", "choices": [" a", " b", " c", " d"], "label": 1}])
    assert load_task(get_task(str(path))).chance("acc") == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert at_chance(0.30, 0.03, 0.25) and not at_chance(0.32, 0.03, 0.25) and at_chance(0.20, 0.03, 0.25)


@pytest.mark.slow
def test_the_chance_guard_trips_on_an_at_chance_task_and_not_on_arc_easy(tmp_path, smollm2, data_dir):
    for data, tripped in ((load_task(get_task(str(_at_chance_task(tmp_path)))).split("search"), True),
                          (load_task("arc_easy", data_dir).split("search"), False)):
        r = evaluate_task(smollm2.model, smollm2.tokenizer, data, limit=100, seed=0, progress=False)
        assert at_chance(r.acc, r.acc_stderr, data.chance("acc")) is tripped, (data.task.name, r.acc, r.acc_stderr)


def test_search_refuses_a_task_its_parent_scores_at_chance_on(tmp_path, tiny_folder, calib_text, capsys):
    from test_pipeline import _prior_setup
    from toolkit.models import load_model

    profile, predictor = _prior_setup(tmp_path, load_model(str(tiny_folder)).model_hash)
    run = tmp_path / "run"
    args = ["search", "--profile", str(profile), "--predictor", str(predictor), "--model", str(tiny_folder),
            "--calibration", str(calib_text), "--task", str(_at_chance_task(tmp_path)), "--limit", "40", "--evals", "4",
            "--population", "4", "--out", str(run)]
    rc = main(args)
    one_line_error(capsys, rc, "--task guess: the parent's acc on the search subset is", "(n=40)", "chance (0.2500)",
                   "--allow-chance")
    assert main([*args, "--allow-chance"]) == 0
    capsys.readouterr()
    meta = json.loads((run / "run.json").read_text())["meta"]
    assert meta["metric"] == "acc" and meta["chance_guard"]["at_chance"] is True
    assert json.loads((run / "pareto.json").read_text())["metric"] == "acc"


def test_search_can_optimise_mc2_and_keeps_its_metric_on_resume(tmp_path, tiny_folder, calib_text, capsys):
    from test_pipeline import _prior_setup
    from toolkit.models import load_model

    profile, predictor = _prior_setup(tmp_path, load_model(str(tiny_folder)).model_hash)
    rows = [{"id": f"m{i}", "context": f"Q: {i}?\nA:", "choices": [" yes", " no", " maybe"], "label": 0,
             "labels": [1, 1, 0] if i % 2 else [1, 0, 0]} for i in range(24)]
    task = _write(tmp_path / "multi.jsonl", rows)
    run = tmp_path / "run"
    args = ["search", "--profile", str(profile), "--predictor", str(predictor), "--model", str(tiny_folder),
            "--calibration", str(calib_text), "--task", str(task), "--limit", "8", "--evals", "4", "--population", "4",
            "--allow-chance", "--out", str(run)]
    plain = _write(tmp_path / "plain.jsonl", [{k: v for k, v in r.items() if k != "labels"} for r in rows])
    rc = main([*args[:10], str(plain), *args[11:], "--metric", "mc2"])
    one_line_error(capsys, rc, "--metric mc2:", "plain.jsonl:", "the row has no labels")
    assert main([*args, "--metric", "mc2"]) == 0
    err = capsys.readouterr().err
    assert "carry labels" not in err  # mc2 reads them: no warning
    meta = json.loads((run / "run.json").read_text())["meta"]
    assert meta["metric"] == "mc2" and meta["chance_guard"]["chance"] == pytest.approx((2 / 3 + 1 / 3) / 2, abs=0.2)
    evals = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    accs = [e["metrics"]["accuracy"] for e in evals if "accuracy" in e.get("metrics", {})]
    assert accs and all(0 < a < 1 for a in accs)  # a probability mass, not a 0/1 mean over 8 rows
    rc = main([*args, "--resume"])  # default metric acc: not what the run was searched on
    one_line_error(capsys, rc, "meta.metric: was 'mc2', now 'acc'; resume with --metric mc2")
