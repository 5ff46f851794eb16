"""Task registry, lm-eval prompts of a fixed example per task, validation of task files, seeded subsets."""

from __future__ import annotations

import json

import pytest

from toolkit.errors import ConfigError, UserError
from toolkit.tasks import REGISTRY, Task, get_task, list_tasks, load_task

SIZES = {"arc_easy": 2376, "arc_challenge": 1172, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267,
         "boolq": 3270, "mmlu": 14042}


def test_registry_has_the_lm_eval_tasks_with_directions():
    names = [t.name for t in list_tasks()]
    for name in (*SIZES, "wikitext2"):
        assert name in names
    for t in list_tasks():
        assert t.metrics and all(m in t.higher_is_better for m in t.metrics)
    assert REGISTRY["arc_easy"].higher_is_better["acc_norm"] is True
    assert REGISTRY["wikitext2"].higher_is_better == {"perplexity": False}
    assert REGISTRY["winogrande"].scoring == "partial" and REGISTRY["winogrande"].metrics == ("acc",)
    assert REGISTRY["mmlu"].fewshot_options == (0, 5)


def test_task_checks_itself():
    with pytest.raises(ConfigError, match="scoring"):
        Task("x", "x.jsonl", scoring="bogus")
    with pytest.raises(ConfigError, match="unknown metric 'f1'"):
        Task("x", "x.jsonl", metrics=("f1",))
    with pytest.raises(ConfigError, match="no direction"):
        Task("x", "x.jsonl", metrics=("mc2",))
    with pytest.raises(ConfigError, match="fewshot_file"):
        Task("x", "x.jsonl", fewshot_options=(0, 5))
    assert Task("x", "x.jsonl").to_dict()["higher_is_better"] == {"acc": True, "acc_norm": True}


@pytest.mark.parametrize("name", list(SIZES))
def test_every_registered_file_loads_with_its_row_count(name, data_dir):
    data = load_task(name, data_dir)
    assert len(data) == SIZES[name]
    for ex in data.examples[:50]:
        assert 0 <= ex.label < ex.num_choices
        assert len(ex.norm_lengths) == ex.num_choices


def _first(name, data_dir, **kw):
    return load_task(name, data_dir, **kw).examples[0]


def test_prompts_of_fixed_examples_are_lm_eval_strings(data_dir):
    ex = _first("arc_easy", data_dir)
    assert ex.id == "Mercury_417466"
    q = "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    assert ex.requests[0] == (q, " Sunlight is the source of energy for nearly all ecosystems.")
    assert ex.label == 0
    # acc_norm divisor: characters of the choice without lm-eval's target delimiter
    assert ex.norm_lengths[0] == len("Sunlight is the source of energy for nearly all ecosystems.")

    ex = _first("arc_challenge", data_dir)
    assert ex.requests[2] == ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
                              "Which is the most likely effect of this increase in rotation?\nAnswer:",
                              " Planetary days will become shorter.")

    ex = load_task("piqa", data_dir).examples[1]
    assert ex.requests == (("Question: dresser\nAnswer:", " replace drawer with bobby pin "),
                           ("Question: dresser\nAnswer:", " finish, woodgrain with  bobby pin "))
    assert ex.norm_lengths == (len("replace drawer with bobby pin "), len("finish, woodgrain with  bobby pin "))

    ex = _first("hellaswag", data_dir)
    assert ex.requests[3] == ("Roof shingle removal: A man is sitting on a roof. he", " starts pulling up roofing on a roof.")

    ex = _first("winogrande", data_dir)  # partial scoring: per-option context, shared continuation
    assert ex.requests == (("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                           ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."))
    assert ex.label == 1
    assert ex.norm_lengths == (len(ex.requests[0][0]), len(ex.requests[1][0]))  # lm-eval: len(doc_to_choice)

    ex = _first("boolq", data_dir)
    assert ex.requests[0][0].startswith("Ethanol fuel -- All biomass goes through")
    assert ex.requests[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert [c for _, c in ex.requests] == [" no", " yes"] and ex.label == 0


MMLU_0 = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
          "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
          "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


def test_mmlu_zero_and_five_shot_prompts(data_dir):
    ex = _first("mmlu", data_dir)
    assert ex.requests[0] == (MMLU_0, " A")
    assert [c for _, c in ex.requests] == [" A", " B", " C", " D"]
    five = _first("mmlu", data_dir, num_fewshot=5).requests[0][0]
    head = "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    shot1 = "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    shot5 = "Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n"
    assert five.startswith(head + shot1)
    assert five.endswith(shot5 + MMLU_0[len(head):])
    assert five.count("\nAnswer:") == 6 and five.count(head) == 1
    with pytest.raises(UserError, match="num_fewshot 5 is not supported"):
        load_task("arc_easy", data_dir, num_fewshot=5)


# -- user files and validation ------------------------------------------------------------------------
def _write(tmp_path, rows, name="items.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


GOOD = {"id": "a", "context": "Q: 2+2?\nA:", "choices": [" 4", " 5"], "label": 0}


def test_user_jsonl_is_a_task(tmp_path):
    path = _write(tmp_path, [GOOD, {**GOOD, "id": "b", "choices": [" é", " ab"], "label": 1}])
    data = load_task(get_task(str(path)))
    assert data.task.name == "items" and len(data) == 2
    assert data.examples[1].norm_lengths == (1, 2)  # characters, not bytes (é is 2 bytes), like lm-eval


BAD = [
    ("missing label", [GOOD, {k: v for k, v in GOOD.items() if k != "label"}], 2, "label: missing required field"),
    ("label out of range", [GOOD, GOOD, {**GOOD, "label": 2}], 3, "label: 2 is out of range for 2 choices"),
    ("empty choices", [{**GOOD, "choices": []}], 1, "choices: must not be empty"),
    ("bad JSON", [GOOD, GOOD, GOOD, '{"id": "x", "context": "q", '], 4, "invalid JSON"),
    ("label not int", [{**GOOD, "label": "0"}], 1, "label: expected an integer"),
    ("bool label", [{**GOOD, "label": True}], 1, "label: expected an integer"),
    ("choice not str", [{**GOOD, "choices": [" a", 3]}], 1, "choices[1]: expected a string"),
    ("no context", [{k: v for k, v in GOOD.items() if k != "context"}], 1, "context: missing required field"),
    ("not an object", ["[1, 2]"], 1, "expected a JSON object"),
    ("one choice", [GOOD, {**GOOD, "choices": [" 4"]}], 2, "choices: need at least 2 choices, got 1"),
    ("bool id", [GOOD, {**GOOD, "id": True}], 2, "id: expected a string, got bool"),
]


@pytest.mark.parametrize("what,rows,line,message", BAD, ids=[b[0] for b in BAD])
def test_malformed_task_files_name_file_and_line(tmp_path, what, rows, line, message):
    path = _write(tmp_path, rows)
    with pytest.raises(UserError) as err:
        load_task(get_task(str(path)))
    text = str(err.value)
    assert f"{path}:{line}: " in text and message in text
    assert "\n" not in text


@pytest.mark.parametrize("what,rows,line,message", BAD[:4] + BAD[-1:], ids=[b[0] for b in BAD[:4] + BAD[-1:]])
def test_cli_malformed_task_file_is_one_line_exit_2(tmp_path, capsys, what, rows, line, message):
    from toolkit.cli.main import main

    path = _write(tmp_path, rows)
    assert main(["eval", "--task", str(path)]) == 2  # validated before any model is loaded
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}:{line}: " in err and message in err


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match="no examples"):
        load_task(get_task(str(empty)))
    with pytest.raises(UserError, match="not found"):
        get_task(str(tmp_path / "nope.jsonl"))
    with pytest.raises(UserError, match="unknown"):
        get_task("arc_medium")


def test_partial_rows_are_checked(tmp_path):
    from dataclasses import replace

    path = _write(tmp_path, [{**GOOD, "partial": {"contexts": ["a"], "continuation": " b"}}])
    task = replace(get_task(str(path)), scoring="partial")
    with pytest.raises(UserError, match=r":1: partial.contexts: has 1 entries for 2 choices"):
        load_task(task)


# -- seeded subsets -----------------------------------------------------------------------------------
def test_select_is_seeded_fixed_and_in_file_order(data_dir):
    full = load_task("arc_easy", data_dir)
    a, b, c = full.select(200, 0), full.select(200, 0), full.select(200, 1)
    assert [e.id for e in a.examples] == [e.id for e in b.examples]
    assert [e.id for e in a.examples] != [e.id for e in c.examples]
    assert len(a) == 200 and list(a.indices) == sorted(a.indices) and len(set(a.indices)) == 200
    assert all(full.examples[i].id == e.id for i, e in zip(a.indices, a.examples))
    assert full.select(None) is full and full.select(10**6) is full
    assert [e.id for e in a.select(50, 3).examples] == [full.examples[i].id for i in a.select(50, 3).indices]
    with pytest.raises(UserError):
        full.select(0)
