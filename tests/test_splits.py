"""Search and report parts of a task: disjoint, covering, fixed by the task alone; the search grades only
on its part, `toolkit eval --split report` only on the other, and a resume on another part is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from toolkit.cli.main import main
from toolkit.errors import UserError
from toolkit.tasks import get_task, load_task, split_positions

from test_pipeline import _prior_setup, tiny_hash  # noqa: F401  (a fixture and the prior predictor; calib_text is in conftest)


def _task(tmp_path, n, name="items"):
    rows = [{"id": f"q{i}", "context": f"Question: {i} plus {i}?\nAnswer:", "choices": [f" {2 * i}", f" {i}", " no"],
             "label": i % 3} for i in range(n)]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ids(data):
    return [e.id for e in data.examples]


@pytest.mark.parametrize("n", [2, 3, 5, 10, 101, 1000])
def test_parts_are_disjoint_cover_the_task_and_keep_file_order(tmp_path, n):
    full = load_task(get_task(str(_task(tmp_path, n))))
    search, report = full.split("search"), full.split("report")
    assert (search.part, report.part, full.part) == ("search", "report", "all")
    assert len(search) == round(n / 2) and len(report) == n - round(n / 2)
    assert set(search.indices).isdisjoint(report.indices)
    assert sorted(search.indices + report.indices) == list(range(n))
    for part in (search, report):
        assert list(part.indices) == sorted(part.indices)  # file order
        assert _ids(part) == [full.examples[i].id for i in part.indices]  # positions in the full file
    assert full.split("all") is full and search.split("search") is search


@pytest.mark.parametrize("limit", [1, 7, 50, 400])
def test_a_select_within_a_part_stays_in_it(tmp_path, limit):
    full = load_task(get_task(str(_task(tmp_path, 500))))
    search, report = full.split("search"), full.split("report")
    for seed in range(4):
        s, r = search.select(limit, seed), report.select(limit, seed)
        assert len(s) == min(limit, len(search)) and s.part == "search" and r.part == "report"
        assert set(s.indices) <= set(search.indices) and set(r.indices) <= set(report.indices)
        assert set(s.indices).isdisjoint(report.indices) and set(_ids(s)).isdisjoint(_ids(report))
        assert _ids(s) == [full.examples[i].id for i in s.indices]


def test_the_split_is_a_function_of_the_task_only(tmp_path):
    """Not of the process (Python's hash() is salted per process), the search seed or numpy's stream."""
    code = "from toolkit.tasks import split_positions; print(list(split_positions('arc_easy', 2376)[0]))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(h)}).stdout for h in (1, 2)}
    here = split_positions("arc_easy", 2376)
    assert outs == {f"{list(here[0])}\n"}
    # Golden: the parts must never move (a change would leak search examples into reports). Regenerate with
    # python -c "from toolkit.tasks import split_positions; s, r = split_positions('arc_easy', 2376); print(s[:8], r[:8])"
    assert here[0][:8] == (0, 1, 2, 4, 7, 8, 10, 12) and here[1][:8] == (3, 5, 6, 9, 11, 13, 18, 20)
    assert split_positions("arc_easy", 2376) != split_positions("arc_challenge", 2376)  # each task its own
    # the same file read twice, under another path, splits the same way (the task name and n decide)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert _ids(load_task(get_task(str(_task(a, 40)))).split("report")) == _ids(load_task(get_task(str(_task(b, 40)))).split("report"))


def test_the_registered_tasks_split_in_halves(data_dir):
    full = load_task("arc_easy", data_dir)
    search, report = full.split("search"), full.split("report")
    assert len(search) == len(report) == 1188
    assert set(_ids(search)).isdisjoint(_ids(report)) and set(_ids(search)) | set(_ids(report)) == set(_ids(full))


def test_a_part_or_a_subset_cannot_be_split_again(tmp_path):
    full = load_task(get_task(str(_task(tmp_path, 20))))
    with pytest.raises(UserError, match="already the search part"):
        full.split("search").split("report")
    with pytest.raises(UserError, match="already the report part"):
        full.split("report").split("all")
    with pytest.raises(UserError, match="subset cannot be split"):
        full.select(10, 0).split("search")
    with pytest.raises(UserError, match="split: must be one of"):
        full.split("test")
    one = load_task(get_task(str(_task(tmp_path, 1, "one"))))
    with pytest.raises(UserError, match="cannot be split"):
        one.split("search")


def test_evaluate_task_on_a_part(tmp_path):
    from dataclasses import replace

    from toolkit.evaluate import evaluate_task
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    model, tok = llama_tiny(), byte_tokenizer()
    full = load_task(get_task(str(_task(tmp_path, 16))))
    r = evaluate_task(model, tok, full, split="report", progress=False)
    assert [e.id for e in r.per_example] == _ids(full.split("report")) and r.split == "report"
    assert r.to_dict()["split"] == "report"
    sub = evaluate_task(model, tok, full, split="search", limit=3, seed=5, progress=False)
    assert [e.id for e in sub.per_example] == _ids(full.split("search").select(3, 5)) and sub.split == "search"
    # the default is unchanged: every example, recorded as "all"; a part passed in stays that part
    assert evaluate_task(model, tok, full, progress=False).split == "all"
    assert evaluate_task(model, tok, full.split("report"), progress=False).split == "report"
    with pytest.raises(ValueError, match="split"):
        replace(r, split="test")


# -- through the CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def scored_ids(monkeypatch):
    """Spy on the evaluator: the ids of every example scored (once per candidate)."""
    import toolkit.evaluate.results as results

    seen: list[list[str]] = []
    real = results.score_examples

    def spy(model, tokenizer, examples, *args, **kwargs):
        seen.append([e.id for e in examples])
        return real(model, tokenizer, examples, *args, **kwargs)

    monkeypatch.setattr(results, "score_examples", spy)
    return seen


def _search(tiny_folder, profile, predictor, task, calib, out, *flags):
    return main(["search", "--profile", str(profile), "--predictor", str(predictor), "--model", str(tiny_folder),
                 "--calibration", str(calib), "--task", str(task), "--evals", "4", "--population", "4",
                 "--out", str(out), "--allow-chance", *flags])


def test_search_grades_only_on_the_search_part(tmp_path, tiny_folder, tiny_hash, calib_text, scored_ids, capsys):
    profile, predictor = _prior_setup(tmp_path, tiny_hash)
    task = _task(tmp_path, 30)
    full = load_task(get_task(str(task)))
    search_ids, report_ids = set(_ids(full.split("search"))), set(_ids(full.split("report")))
    for seed in (0, 3):
        scored_ids.clear()
        run = tmp_path / f"run{seed}"
        assert _search(tiny_folder, profile, predictor, task, calib_text, run, "--limit", "6", "--seed", str(seed)) == 0
        assert len(scored_ids) >= 4  # one evaluation per candidate
        assert all(set(ids) <= search_ids and len(ids) == 6 for ids in scored_ids)
        assert scored_ids[0] == _ids(full.split("search").select(6, seed))
        assert json.loads((run / "run.json").read_text())["meta"]["split"] == "search"
        pareto = json.loads((run / "pareto.json").read_text())
        assert pareto["split"] == "search" and pareto["limit"] == 6
    assert not report_ids & {i for ids in scored_ids for i in ids}
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run3")]) == 0
    assert "a seeded subset of 6 from the search part" in capsys.readouterr().out
    from toolkit.report import accuracy_source  # an old pareto.json (no split): every example, none held out

    assert "all examples" in accuracy_source({"task": "arc_easy", "limit": 200}) and "--split search" in accuracy_source({"task": "t"})
    # --limit 0: the whole search part, and nothing else
    scored_ids.clear()
    assert _search(tiny_folder, profile, predictor, task, calib_text, tmp_path / "whole", "--limit", "0") == 0
    assert all(set(ids) == search_ids for ids in scored_ids)


def test_resume_on_another_split_is_refused(tmp_path, tiny_folder, tiny_hash, calib_text, capsys, monkeypatch):
    import toolkit.models

    profile, predictor = _prior_setup(tmp_path, tiny_hash)
    task, run = _task(tmp_path, 20), tmp_path / "run"
    assert _search(tiny_folder, profile, predictor, task, calib_text, run, "--limit", "4") == 0
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    real_load = toolkit.models.load_model
    monkeypatch.setattr(toolkit.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    capsys.readouterr()
    assert _search(tiny_folder, profile, predictor, task, calib_text, run, "--limit", "4", "--resume", "--split", "all") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.split: was 'search', now 'all'" in err[0] and str(run / "run.json") in err[0]
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files  # nothing written
    # a run made before the split existed has no meta.split: it was graded on all examples
    record = json.loads((run / "run.json").read_text())
    del record["meta"]["split"]
    (run / "run.json").write_text(json.dumps(record))
    assert _search(tiny_folder, profile, predictor, task, calib_text, run, "--limit", "4", "--resume") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was 'all', now 'search'" in err[0] and "--split all" in err[0]
    monkeypatch.setattr(toolkit.models, "load_model", real_load)
    assert _search(tiny_folder, profile, predictor, task, calib_text, run, "--limit", "4", "--resume", "--split", "all",
                   "--json") == 0
    assert json.loads(capsys.readouterr().out)["new_evaluations"] == 0


def test_the_library_searcher_refuses_a_resume_on_another_split(tmp_path):
    from test_search import SPACE, accuracy, predict
    from toolkit.search import Searcher, SearchSettings

    settings = SearchSettings(evals=8, population=4, seed=1)
    Searcher(SPACE, settings, accuracy, predict, tmp_path / "r", meta={"split": "search"}).run()
    with pytest.raises(UserError, match="meta.split: was 'search', now 'all'"):
        Searcher(SPACE, settings, accuracy, predict, tmp_path / "r", meta={}, resume=True)
    Searcher(SPACE, settings, accuracy, predict, tmp_path / "r", meta={"split": "search"}, resume=True)


def test_cli_eval_split_report_scores_exactly_the_report_part(tmp_path, tiny_folder, capsys):
    task = _task(tmp_path, 24)
    full = load_task(get_task(str(task)))
    args = ["eval", "--model", str(tiny_folder), "--task", str(task), "--json", "--per-example", "--threads", "1"]
    assert main(args + ["--split", "report"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert [e["id"] for e in r["per_example"]] == _ids(full.split("report")) and r["split"] == "report"
    assert main(args + ["--split", "report", "--limit", "5", "--seed", "2"]) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert [e["id"] for e in r["per_example"]] == _ids(full.split("report").select(5, 2))
    assert main(args) == 0
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["split"] == "all" and r["n"] == 24
    assert main(["eval", "--model", str(tiny_folder), "--task", str(task), "--split", "report", "--threads", "1"]) == 0
    assert "items (report part)" in capsys.readouterr().out


@pytest.mark.parametrize("flags,message", [
    (["--task", "wikitext2"], "wikitext2 is a perplexity corpus"),
    (["--text", "notes.txt"], "--text is a perplexity text"),
])
def test_cli_eval_split_of_a_perplexity_text_is_one_line_before_loading(tmp_path, tiny_folder, capsys, flags, message,
                                                                        model_must_not_load):
    assert main(["eval", "--model", str(tiny_folder), "--split", "report", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
