"""NSGA-II search: determinism, constraints, failures, and kill -9 / resume."""

import json
import os
import signal
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from toolkit.errors import ConfigError, UserError
from toolkit.search import EvaluationJournal, Searcher, SearchSettings, load_evaluations
from toolkit.space import ParentShape, SearchSpace

TINY = ParentShape(num_layers=6, hidden_size=64, intermediate_size=256, num_heads=4, num_kv_heads=2,
                   head_dim=16, vocab_size=256, tie_word_embeddings=True)
SPACE = SearchSpace.from_parent(TINY, layer_order=[0, 5, 1, 4, 2, 3], mlp_step=32)
FULL = TINY.num_params(TINY.full_config())


def accuracy(cfg):
    """Deterministic stand-in for a task evaluation: bigger is better, with config-specific jitter."""
    jitter = (zlib.crc32(cfg.to_json().encode()) % 1000) / 1000 * 0.02
    return {"accuracy": 0.3 + 0.5 * (TINY.num_params(cfg) / FULL) ** 0.7 + jitter, "accuracy_stderr": 0.01}


def predict(cfg):
    p = TINY.num_params(cfg)
    return {"decode_tokens_per_s": 1e7 / (p + 2e4 * cfg.depth), "params": float(p), "peak_mem_bytes": 4.0 * p,
            "prefill_ms": p / 1e4}


def run(tmp, name, resume=False, acc=accuracy, **kw):
    settings = SearchSettings(evals=kw.pop("evals", 60), population=kw.pop("population", 12), seed=kw.pop("seed", 7), **kw)
    s = Searcher(SPACE, settings, acc, predict, tmp / name, resume=resume)
    return s.run(), s


def front_keys(res):
    return [e.key for e in res.front]


def test_same_seed_same_front(tmp_path):
    a, _ = run(tmp_path, "a")
    b, _ = run(tmp_path, "b")
    c, _ = run(tmp_path, "c", seed=8)
    assert front_keys(a) == front_keys(b) and a.hypervolume == pytest.approx(b.hypervolume)
    assert front_keys(a) != front_keys(c)
    assert len(a.evaluations) >= 60 and len({e.key for e in a.evaluations}) == len(a.evaluations)
    pareto = json.loads((tmp_path / "a" / "pareto.json").read_text())
    assert [f["key"] for f in pareto["front"]] == front_keys(a)
    # the search writes its journal and pareto.json; the report files are the report's, from what it is given
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["evaluations.jsonl", "pareto.json", "run.json"]
    from toolkit.report import write_run_report
    from toolkit.search import axis_labels

    write_run_report(tmp_path / "a", a.evaluations, a.front, ("accuracy", "decode_tokens_per_s"), a.parent,
                     labels=axis_labels(("accuracy", "decode_tokens_per_s")))
    assert (tmp_path / "a" / "evaluations.csv").read_text().count("\n") == len(a.evaluations) + 1
    assert (tmp_path / "a" / "pareto.png").stat().st_size > 1000


def test_nsga2_beats_random_search_on_hypervolume(tmp_path):
    nsga = [run(tmp_path, f"n{s}", seed=s, evals=80)[0].hypervolume for s in range(3)]
    rand = [run(tmp_path, f"r{s}", seed=s, evals=80, algorithm="random")[0].hypervolume for s in range(3)]
    assert np.mean(nsga) > np.mean(rand)


def test_memory_budget_makes_candidates_infeasible_not_crash(tmp_path):
    budget = 4.0 * FULL * 0.6  # the parent does not fit
    res, s = run(tmp_path, "m", memory_budget_bytes=budget)
    over = [e for e in res.evaluations if e.metrics["peak_mem_bytes"] > budget]
    assert over and all(not e.feasible and e.violation > 0 for e in over)
    parent_key = SPACE.largest().key()
    assert all("accuracy" not in e.metrics for e in over if e.key != parent_key)  # accuracy not even measured
    assert res.front and all(e.metrics["peak_mem_bytes"] <= budget for e in res.front)
    # ... except the parent's: it is the reference the front is read against (report, export fastest-within)
    parent = json.loads((tmp_path / "m" / "pareto.json").read_text())["parent"]
    assert parent["feasible"] is False and parent["accuracy_measured"] is True
    assert parent["metrics"]["accuracy"] == pytest.approx(accuracy(SPACE.largest())["accuracy"])


def test_an_exception_is_recorded_and_the_search_goes_on(tmp_path):
    def bad(cfg):
        return zlib.crc32(cfg.key().encode()) % 4 == 0  # about a quarter of the candidates

    def flaky(cfg):
        if bad(cfg):
            raise RuntimeError("out of memory (simulated)")
        return accuracy(cfg)

    res, _ = run(tmp_path, "f", acc=flaky)
    failed = [e for e in res.evaluations if e.error]
    assert failed and all(bad(e.config) and "simulated" in e.error and not e.feasible for e in failed)
    assert len(res.evaluations) >= 60 and res.front and not any(bad(e.config) for e in res.front)


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    run(tmp_path, "x", evals=20)
    with pytest.raises(UserError, match="--resume"):
        run(tmp_path, "x", evals=20)
    with pytest.raises(UserError, match="settings"):
        run(tmp_path, "x", evals=30, resume=True)


def test_torn_journal_line_is_dropped(tmp_path):
    res, _ = run(tmp_path, "t", evals=20)
    path = tmp_path / "t" / "evaluations.jsonl"
    n = len(EvaluationJournal(path))
    with open(path, "a") as fh:
        fh.write('{"index": 99, "key": "abc", "con')  # killed mid-write
    assert len(EvaluationJournal(path)) == n and path.read_text().endswith("\n")


DRIVER = r"""
import sys, time
sys.path.insert(0, {tests!r})
from test_search import SPACE, accuracy, predict
from toolkit.search import Searcher, SearchSettings

def slow_accuracy(cfg):
    time.sleep(0.05)
    return accuracy(cfg)

resume = sys.argv[2] == "resume"
s = Searcher(SPACE, SearchSettings(evals=70, population=12, seed=3), slow_accuracy, predict, sys.argv[1], resume=resume)
s.run()
"""


def test_kill_minus_9_three_times_then_resume_gives_the_same_front(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "TOOLKIT_PROGRESS": "0"}
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(driver), str(ref), "new"], check=True, env=env)
    run_dir = tmp_path / "killed"
    journal = run_dir / "evaluations.jsonl"
    kill_at = sorted(np.random.default_rng(0).choice(np.arange(5, 65), size=3, replace=False))  # journal lengths
    mode = "new"
    for target in kill_at:
        p = subprocess.Popen([sys.executable, str(driver), str(run_dir), mode], env=env)
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= target:
                break
            time.sleep(0.005)
        assert p.poll() is None, "the run ended before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait()
        mode = "resume"
    subprocess.run([sys.executable, str(driver), str(run_dir), "resume"], check=True, env=env)
    lines = [json.loads(l) for l in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    keys = [l["key"] for l in lines]
    assert len(keys) == len(set(keys)), "an evaluation was repeated"
    assert [l["index"] for l in lines] == list(range(len(lines))), "an evaluation was lost"
    ref_evals = load_evaluations(ref)
    assert sorted(keys) == sorted(e.key for e in ref_evals)
    a = json.loads((ref / "pareto.json").read_text())
    b = json.loads((run_dir / "pareto.json").read_text())
    assert [f["key"] for f in a["front"]] == [f["key"] for f in b["front"]]
    assert a["hypervolume"] == pytest.approx(b["hypervolume"])


@pytest.mark.parametrize("field,value,message", [
    ("evals", 0, "at least 2"), ("population", 1, "at least 4"), ("seed", -1, "non-negative"),
    ("max_params", -1, "positive"), ("max_params", 0, "positive"), ("min_accuracy", 2.0, "[0, 1]"),
    ("min_accuracy", -0.1, "[0, 1]"), ("memory_budget_bytes", 0, "positive"), ("evals", 2.5, "integer"),
    ("min_accuracy", float("nan"), "finite"), ("evals", True, "integer"),
    ("objectives", ("params", "decode_tokens_per_s"), "accuracy must be one of the objectives"),
])
def test_bad_settings_are_refused(field, value, message):
    with pytest.raises(ConfigError) as err:
        SearchSettings(**{field: value})
    assert err.value.field == field and message in str(err.value)


def test_every_candidate_infeasible_is_flagged(tmp_path):
    res, _ = run(tmp_path, "none", evals=8, population=4, memory_budget_bytes=1.0)  # nothing fits in a byte
    pareto = json.loads((tmp_path / "none" / "pareto.json").read_text())
    assert not res.front and pareto["front"] == [] and pareto["feasible_count"] == 0
    assert pareto["parent"]["accuracy_measured"] is True and pareto["parent"]["metrics"]["accuracy"] > 0


def test_every_evaluation_failing_is_counted(tmp_path):
    def broken(cfg):
        raise RuntimeError("CUDA out of memory (simulated)")

    res, _ = run(tmp_path, "err", acc=broken, evals=8, population=4)
    pareto = json.loads((tmp_path / "err" / "pareto.json").read_text())
    assert pareto["feasible_count"] == 0 and pareto["error_count"] == len(res.evaluations) > 0
    assert pareto["parent"]["accuracy_measured"] is False


def test_a_user_error_stops_the_search_and_journals_nothing(tmp_path):
    def bad_input(cfg):
        raise UserError("items.jsonl:3: choice 0: the continuation is 900 tokens")

    with pytest.raises(UserError, match="items.jsonl:3"):
        run(tmp_path, "u", acc=bad_input, evals=8, population=4)
    journal = tmp_path / "u" / "evaluations.jsonl"
    assert not journal.exists() or journal.read_text() == ""


def test_legacy_unmeasured_parent_accuracy_is_not_a_result():
    from toolkit.search import Evaluation, accuracy_measured

    cfg = SPACE.largest()
    legacy = Evaluation(0, cfg.key(), cfg, {"accuracy": 0.0, "params": 1.0}, feasible=False, violation=0.3)
    measured = Evaluation(0, cfg.key(), cfg, {"accuracy": 0.0, "accuracy_stderr": 0.0}, feasible=False, violation=0.3)
    assert not accuracy_measured(legacy) and accuracy_measured(measured)


def test_report_front_of_an_old_pareto_json_does_not_print_an_unmeasured_parent_accuracy(tmp_path, capsys):
    """An old run's pareto.json: the infeasible parent's accuracy 0.0 was never measured and there is no
    accuracy_measured flag; report decides with the search's own rule, not its own default."""
    from toolkit.cli.report import print_run_front
    from toolkit.search import Evaluation

    cfg = SPACE.largest()
    parent = Evaluation(0, cfg.key(), cfg, {"accuracy": 0.0, "decode_tokens_per_s": 5.0, "params": 1.0},
                        feasible=False, violation=0.3).to_dict()
    assert "accuracy_measured" not in parent
    (tmp_path / "pareto.json").write_text(json.dumps({"evaluations": 1, "hypervolume": 0.0, "feasible_count": 0,
                                                      "front": [], "parent": parent}))
    print_run_front(tmp_path)
    out = capsys.readouterr().out
    assert "accuracy not measured" in out and "accuracy 0.000" not in out


@pytest.mark.parametrize("text", ['{"version": 1, "settings": {"objec', "[1, 2]", "\x00\xff binary", '{"settings": []}',
                                  '{"settings": {"evals": -3}, "space": {}}'])
def test_a_broken_run_json_is_one_line_on_resume(tmp_path, text):
    run(tmp_path, "b", evals=8, population=4)
    (tmp_path / "b" / "run.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as err:
        run(tmp_path, "b", resume=True, evals=8, population=4)
    assert str(tmp_path / "b" / "run.json") in str(err.value) and "\n" not in str(err.value)


def test_progress_mid_generation_reports_only_what_is_journaled(tmp_path, monkeypatch):
    """Progress is reported between the evaluations of a generation (at most twice a second): the keys of
    the batch still waiting must not be read as journaled (a real clock: every evaluation > 0.5 s)."""
    import toolkit.search.searcher as searcher

    clock = iter(range(10**6))
    monkeypatch.setattr(searcher.time, "monotonic", lambda: float(next(clock)))  # each call: one second later
    states = []
    settings = SearchSettings(evals=16, population=8, seed=7)
    s = Searcher(SPACE, settings, accuracy, predict, tmp_path / "p", on_progress=states.append)
    res = s.run()
    counts = [st["evaluations"] for st in states]
    assert len(states) > 4 and counts == sorted(counts) and 0 < min(counts) < 8  # reported mid-generation
    assert counts[-1] == len(res.evaluations)


@pytest.mark.parametrize("parallel", [False, True])
def test_an_accuracy_measured_before_the_search_is_used_not_regraded(tmp_path, parallel):
    from toolkit.search.executors import LocalExecutor

    graded = []

    def counting(cfg):
        graded.append(cfg.key())
        return accuracy(cfg)

    parent = SPACE.largest()
    before = {"accuracy": 0.123, "accuracy_stderr": 0.01}
    settings = SearchSettings(evals=24, population=12, seed=7)
    executor = LocalExecutor(fn=counting)
    executor.parallel = parallel  # the seam the Ray pool uses; the parent must not go to it either
    s = Searcher(SPACE, settings, None, predict, tmp_path / "run", executor=executor, known={parent.key(): before})
    result = s.run()
    assert parent.key() not in graded and len(graded) >= 20
    got = next(e for e in result.evaluations if e.key == parent.key())
    assert got.metrics["accuracy"] == 0.123


@pytest.mark.parametrize("missing", ["pymoo", "matplotlib"])
def test_a_missing_search_extra_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, missing):
    """Without pymoo or matplotlib, `toolkit search` and `toolkit report` stop at once with one line naming the
    [search] extra (exit 2), before any file is read or written, not after every evaluation."""
    import importlib.util

    from toolkit.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == missing else real(name, *a, **k))
    out = tmp_path / "run"
    rc = main(["search", "--model", str(tmp_path / "no-model"), "--profile", str(tmp_path / "no-profile.yaml"),
               "--predictor", str(tmp_path / "no.json"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"{missing} is not installed" in err, err
    assert "pip install 'llm-nas-toolkit[search]'" in err and not out.exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "[search] extra" in capsys.readouterr().err


def test_run_json_settings_are_checked_field_by_field(tmp_path):
    from toolkit.search import read_run_record

    good = {"settings": SearchSettings(evals=16, population=8).to_dict(), "space": {}, "meta": {}}
    (tmp_path / "run.json").write_text(json.dumps(good))
    assert read_run_record(tmp_path)["settings"]["evals"] == 16
    for bad, field in (({"colour": 1}, "settings.colour"), ({"population": 2}, "settings.population"),
                       ({"objectives": ["accuracy"]}, "settings.objectives")):
        (tmp_path / "run.json").write_text(json.dumps({**good, "settings": {**good["settings"], **bad}}))
        with pytest.raises(ConfigError) as err:
            read_run_record(tmp_path)
        assert err.value.field == field and str(tmp_path / "run.json") in str(err.value)
