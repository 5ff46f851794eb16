"""The stages talk through files: calibrate -> predict -> search -> report, through the CLI, on a tiny model."""

import json

import pytest

from toolkit.cli.main import main
from toolkit.models.tiny import tiny_profile_yaml

PROFILE = tiny_profile_yaml()


@pytest.fixture
def task_file(tmp_path):
    rows = [{"id": f"q{i}", "context": f"Question: {i} plus {i}?\nAnswer:", "choices": [f" {2 * i}", f" {i}", " no"],
             "label": 0} for i in range(12)]
    path = tmp_path / "tiny_task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_calibrate_predict_search_report(tmp_path, tiny_folder, task_file, calib_text, capsys):
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    predictor = tmp_path / "predictor.json"
    common = ["--model", str(tiny_folder), "--calibration", str(calib_text)]
    assert main(["calibrate", "--profile", str(profile), *common, "--samples", "5", "--repeats", "2",
                 "--out", str(predictor)]) == 0
    pred = json.loads(predictor.read_text())
    assert len(pred["measurements"]) == 5 and pred["profile"]["name"] == "tiny-test-cpu"
    assert set(pred["cv"]) >= {"prefill_ms", "decode_ms_per_token", "peak_mem_bytes", "uncalibrated"}
    assert not predictor.with_suffix(".measurements.jsonl").exists()  # journal removed once saved

    # refit from saved measurements: no timing, same coefficients
    refit = tmp_path / "refit.json"
    assert main(["calibrate", "--refit", str(predictor), "--out", str(refit)]) == 0
    assert json.loads(refit.read_text())["coefficients"] == pred["coefficients"]

    capsys.readouterr()
    assert main(["predict", "--predictor", str(predictor), "--full", "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["decode_tokens_per_s"] > 0 and full["calibrated"] is True

    run = tmp_path / "run"
    args = ["search", "--profile", str(profile), "--predictor", str(predictor), *common, "--task", str(task_file),
            "--limit", "8", "--evals", "10", "--population", "4", "--seed", "0", "--out", str(run),
            "--allow-chance"]  # a tiny random model guesses
    assert main(args) == 0
    shown = capsys.readouterr().out  # for people (no --json): the summary and the front, as tables
    assert "toolkit search" in shown and "new_evaluations" in shown and "Pareto front of" in shown and "parent:" in shown
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["evaluations"] >= 10 and pareto["front"] and pareto["parent"]["metrics"]["accuracy"] >= 0
    # a measured profile written next to the run is not on the profile search path: export finds it by file
    import dataclasses

    from toolkit.export.pareto import ParetoFront

    assert pareto["profile_file"] == "../profile.yaml"  # relative to the run folder, so the folder can move
    front = ParetoFront.read(run)
    assert front.profile_file == str(profile.resolve()) and front.profile_ref() == str(profile.resolve())
    assert dataclasses.replace(front, profile_file=str(tmp_path / "gone.yaml")).profile_ref() == "tiny-test-cpu"
    assert all(0 <= f["metrics"]["accuracy"] <= 1 for f in pareto["front"])
    assert (run / "pareto.png").exists() and (run / "evaluations.csv").exists()
    # a second invocation without --resume refuses; with --resume it evaluates nothing new
    assert main(args) == 2
    capsys.readouterr()
    assert main(args + ["--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_evaluations"] == 0
    # accuracies graded in another dtype would not be comparable: resuming with one is refused
    assert json.loads((run / "run.json").read_text())["meta"]["eval_dtype"] == "float32"
    assert main(args + ["--resume", "--eval-dtype", "bfloat16"]) == 2
    assert "meta.eval_dtype" in capsys.readouterr().err
    assert main(["report", str(run), "--json"]) == 0


def test_predictor_for_another_model_is_refused(tmp_path, tiny_folder, task_file, calib_text, capsys):
    from toolkit.calibrate import Hardware, Predictor, Workload
    from toolkit.space import ParentShape

    from toolkit.profiles import load_profile

    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    shape = ParentShape(4, 64, 256, 4, 2, 16, 256, True)

    def search(predictor_fingerprint):
        p = Predictor.prior("not-this-model", "x", predictor_fingerprint, shape, Hardware(1e11, 1e10), Workload(16, 4, 1))
        p.save(tmp_path / "p.json")
        rc = main(["search", "--profile", str(profile), "--predictor", str(tmp_path / "p.json"), "--model",
                   str(tiny_folder), "--calibration", str(calib_text), "--task", str(task_file), "--evals", "4",
                   "--population", "4", "--out", str(tmp_path / "run"), "--allow-chance"])
        return rc, capsys.readouterr().err.strip().splitlines()

    rc, err = search("another-device")
    assert rc == 2 and len(err) == 1 and "profile.fingerprint" in err[0]
    rc, err = search(load_profile(profile).fingerprint)
    assert rc == 2 and len(err) == 1 and "model_hash" in err[0]
    assert not (tmp_path / "run").exists()  # nothing half-written


# -- bad search/report input: one line, exit 2, before the model loads, nothing written -----------------
@pytest.fixture(scope="module")
def tiny_hash(tiny_folder):
    from toolkit.models import load_model

    return load_model(str(tiny_folder)).model_hash


def _prior_setup(tmp_path, tiny_hash, profile_text=PROFILE):
    """A profile and a roofline-prior predictor for the tiny parent (no calibration run needed)."""
    from toolkit.calibrate import Hardware, Predictor, Workload
    from toolkit.profiles import load_profile
    from toolkit.space import ParentShape

    profile = tmp_path / "profile.yaml"
    profile.write_text(profile_text)
    p = load_profile(profile)
    predictor = tmp_path / "p.json"
    Predictor.prior(tiny_hash, p.name, p.fingerprint, ParentShape(4, 64, 256, 4, 2, 16, 256, True),
                    Hardware(1e11, 1e10), Workload(16, 4, 1)).save(predictor)
    return profile, predictor


def _search_args(tiny_folder, profile, predictor, task_file, calib_text, out):
    return ["search", "--profile", str(profile), "--predictor", str(predictor), "--model", str(tiny_folder),
            "--calibration", str(calib_text), "--task", str(task_file), "--limit", "4", "--evals", "4",
            "--population", "4", "--allow-chance", "--out", str(out)]  # --out last: tests swap it


@pytest.mark.parametrize("flags,message", [
    (["--limit", "-5"], "--limit: must be 0"),
    (["--max-params", "-1"], "--max-params: must be positive"),
    (["--max-params", "0"], "--max-params: must be positive"),
    (["--min-accuracy", "2.0"], "--min-accuracy: must be in [0, 1]"),
    (["--eval-threads", "0"], "--eval-threads: must be at least 1"),
    (["--evals", "0"], "--evals: need at least 2"),
    (["--population", "1"], "--population: need a population of at least 4"),
    (["--seed", "-3"], "--seed: must be a non-negative"),
    (["--objectives", "accuracy"], "--objectives: need at least two"),
])
def test_bad_search_arguments_are_one_line_before_loading(tmp_path, tiny_folder, tiny_hash, task_file, calib_text,
                                                          capsys, flags, message, model_must_not_load):

    profile, predictor = _prior_setup(tmp_path, tiny_hash)
    out = tmp_path / "run"
    args = _search_args(tiny_folder, profile, predictor, task_file, calib_text, out)
    assert main(args + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_one_choice_task_row_is_refused_before_loading(tmp_path, tiny_folder, tiny_hash, calib_text, capsys, model_must_not_load):

    profile, predictor = _prior_setup(tmp_path, tiny_hash)
    task = tmp_path / "one.jsonl"
    task.write_text(json.dumps({"context": "Q:", "choices": [" a", " b"], "label": 0}) + "\n"
                    + json.dumps({"context": "Q:", "choices": [" a"], "label": 0}) + "\n")
    assert main(_search_args(tiny_folder, profile, predictor, task, calib_text, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{task}:2: choices: need at least 2" in err[0]
    assert not (tmp_path / "run").exists()


def test_every_candidate_over_the_memory_budget(tmp_path, tiny_folder, tiny_hash, task_file, calib_text, capsys):
    """The parent is measured anyway (it is the reference), pareto.json says nothing was feasible, stderr says
    so in one line, exit 3; `report` prints the parent's measured accuracy and the empty front."""
    profile, predictor = _prior_setup(tmp_path, tiny_hash, PROFILE + "memory: {usable_bytes: 1000}\n")
    run = tmp_path / "run"
    assert main(_search_args(tiny_folder, profile, predictor, task_file, calib_text, run) + ["--json"]) == 3
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "no feasible sub-network" in err and "GiB" in err
    assert json.loads(out)["feasible"] == 0
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["feasible_count"] == 0 and pareto["front"] == []
    parent = pareto["parent"]
    assert parent["accuracy_measured"] is True and parent["feasible"] is False and "accuracy_stderr" in parent["metrics"]
    assert main(["report", str(run)]) == 0
    text = capsys.readouterr().out
    assert f"parent: accuracy {parent['metrics']['accuracy']:.3f}" in text and "over the constraints" in text
    assert "no feasible sub-network" in text


@pytest.mark.parametrize("what", ["truncated run.json", "list run.json", "list pareto.json", "bad journal line"])
def test_report_and_resume_on_a_broken_run_folder(tmp_path, tiny_folder, tiny_hash, task_file, calib_text, capsys,
                                                  monkeypatch, what):
    import toolkit.models

    profile, predictor = _prior_setup(tmp_path, tiny_hash)
    run = tmp_path / "run"
    args = _search_args(tiny_folder, profile, predictor, task_file, calib_text, run)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"version": 1, "settings": {"evals": 4}, "space": {}, "meta": {}}))
    (run / "evaluations.jsonl").write_text("")
    if what == "truncated run.json":
        (run / "run.json").write_text('{"version": 1, "settings": {"objectives": ["acc')
    elif what == "list run.json":
        (run / "run.json").write_text("[1, 2]")
    else:  # a real run, then one of its files broken
        assert main(args[:-2] + ["--out", str(tmp_path / "real")]) == 0
        run = tmp_path / "real"
        args = args[:-1] + [str(run)]
        if what == "list pareto.json":
            (run / "pareto.json").write_text("[]")
        else:
            with open(run / "evaluations.jsonl", "a") as fh:
                fh.write('{"index": 99}\n')
    capsys.readouterr()
    files = sorted(p.name for p in run.iterdir())
    monkeypatch.setattr(toolkit.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rc = main(["report", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    if what == "list pareto.json":  # re-rendered from the journal
        assert rc == 0 and isinstance(json.loads((run / "pareto.json").read_text()), dict)
        return
    assert rc == 2 and len(err) == 1 and str(run) in err[0] and "Traceback" not in err[0]
    if what != "bad journal line":
        assert main(args + ["--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(run / "run.json") in err[0]
    assert sorted(p.name for p in run.iterdir()) == files
