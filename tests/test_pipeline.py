"""The stages talk through files: calibrate -> predict -> search -> report, through the CLI, on a tiny model."""

import json

import pytest

from toolkit.cli.main import main

PROFILE = """\
version: 1
name: tiny-test-cpu
extends: ryzen9-7950x
runtime: {device: cpu, dtype: float32, threads: 1}
workload: {prompt_tokens: 16, generate_tokens: 4, batch_size: 1}
"""


@pytest.fixture
def task_file(tmp_path):
    rows = [{"id": f"q{i}", "context": f"Question: {i} plus {i}?\nAnswer:", "choices": [f" {2 * i}", f" {i}", " no"],
             "label": 0} for i in range(12)]
    path = tmp_path / "tiny_task.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def calib_text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 200)
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
    assert main(["predict", "--predictor", str(predictor), "--full"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["decode_tokens_per_s"] > 0 and full["calibrated"] is True

    run = tmp_path / "run"
    args = ["search", "--profile", str(profile), "--predictor", str(predictor), *common, "--task", str(task_file),
            "--limit", "8", "--evals", "10", "--population", "4", "--seed", "0", "--out", str(run)]
    assert main(args) == 0
    pareto = json.loads((run / "pareto.json").read_text())
    assert pareto["evaluations"] >= 10 and pareto["front"] and pareto["parent"]["metrics"]["accuracy"] >= 0
    # a measured profile written next to the run is not on the profile search path: export finds it by file
    from toolkit.cli.export import run_profile_ref

    assert pareto["profile_file"] == str(profile.resolve()) and run_profile_ref(pareto) == str(profile.resolve())
    assert run_profile_ref({**pareto, "profile_file": str(tmp_path / "gone.yaml")}) == "tiny-test-cpu"
    assert all(0 <= f["metrics"]["accuracy"] <= 1 for f in pareto["front"])
    assert (run / "pareto.png").exists() and (run / "evaluations.csv").exists()
    # a second invocation without --resume refuses; with --resume it evaluates nothing new
    assert main(args) == 2
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["new_evaluations"] == 0
    # accuracies graded in another dtype would not be comparable: resuming with one is refused
    assert json.loads((run / "run.json").read_text())["meta"]["eval_dtype"] == "float32"
    assert main(args + ["--resume", "--eval-dtype", "bfloat16"]) == 2
    assert "meta.eval_dtype" in capsys.readouterr().err
    assert main(["report", str(run), "--json"]) == 0


def test_predictor_for_another_model_is_refused(tmp_path, tiny_folder, task_file, calib_text, capsys):
    from toolkit.predictor import Hardware, Predictor, Workload
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
                   "--population", "4", "--out", str(tmp_path / "run")])
        return rc, capsys.readouterr().err.strip().splitlines()

    rc, err = search("another-device")
    assert rc == 2 and len(err) == 1 and "profile.fingerprint" in err[0]
    rc, err = search(load_profile(profile).fingerprint)
    assert rc == 2 and len(err) == 1 and "model_hash" in err[0]
    assert not (tmp_path / "run").exists()  # nothing half-written
