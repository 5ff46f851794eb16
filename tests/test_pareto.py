"""Reading pareto.json for export (toolkit.export.pareto): paths, objective order, the within-tolerance pick."""

from __future__ import annotations

import dataclasses
import json

import pytest

from toolkit.cli.main import main
from toolkit.errors import ConfigError, UserError
from toolkit.export.pareto import ParetoEntry, ParetoFront, best_within, parse_pick
from toolkit.space import SubnetConfig

CFG = SubnetConfig((0, 1), (128, 128), (2, 2))
FULL = SubnetConfig((0, 1, 2, 3), (256,) * 4, (4,) * 4)


def _entry(acc, tps, cfg=CFG):
    return {"config": cfg.to_dict(), "metrics": {"accuracy": acc, "decode_tokens_per_s": tps}, "feasible": True,
            "accuracy_measured": True}


def _write(tmp_path, **fields):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    pareto = {"version": 1, "model": "tiny", "model_hash": "h", "profile": None, "task": "arc_easy",
              "parent": _entry(0.6, 10.0, FULL), "front": [_entry(0.58, 20.0), _entry(0.40, 40.0)], **fields}
    (run / "pareto.json").write_text(json.dumps(pareto))
    return run


def test_relative_paths_are_relative_to_the_folder_of_the_file(tmp_path, monkeypatch):
    run = _write(tmp_path, model="../parent", profile_file="measured.yaml")
    (run / "measured.yaml").write_text("name: x\n")
    monkeypatch.chdir(tmp_path.parent)  # not the run's folder: the current directory must not matter
    front = ParetoFront.read(run)
    assert front.model == str((run / "../parent").resolve())
    assert front.profile_file == str((run / "measured.yaml").resolve()) and front.profile_ref() == front.profile_file


def test_absolute_paths_and_embedded_model_names_are_kept(tmp_path):
    gone = tmp_path / "elsewhere" / "gone.yaml"
    front = ParetoFront.read(_write(tmp_path, model="smollm2-135m", profile="tiny-test-cpu", profile_file=str(gone)))
    assert front.model == "smollm2-135m" and front.profile_file == str(gone)
    assert front.profile_ref() == "tiny-test-cpu"  # the file is gone: the profile's name


def test_export_loads_the_model_relative_to_the_run(tmp_path, capsys, monkeypatch):
    import toolkit.models

    def load_model(model, *a, **k):
        raise UserError(f"REACHED load_model({model})")

    monkeypatch.setattr(toolkit.models, "load_model", load_model)
    run = _write(tmp_path, model="parent-model")
    monkeypatch.chdir(tmp_path.parent)
    rc = main(["export", str(run), "--pick", "0", "--format", "hf", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"REACHED load_model({run / 'parent-model'})" in err


def test_an_index_pick_needs_accuracy_as_the_first_objective(tmp_path, capsys):
    objectives = [{"name": "decode_tokens_per_s", "higher_is_better": True},
                  {"name": "accuracy", "higher_is_better": True}]
    run = _write(tmp_path, objectives=objectives)
    front = ParetoFront.read(run)
    assert front.objectives == ("decode_tokens_per_s", "accuracy")
    with pytest.raises(UserError, match=r"--pick 0: .*pareto.json: objectives: the front is ordered by "
                                        r"'decode_tokens_per_s', not accuracy"):
        front.pick(parse_pick("0"), str(run / "pareto.json"))
    assert front.pick(parse_pick("fastest-within:0.05")).metrics["decode_tokens_per_s"] == 20.0  # order-free
    rc = main(["export", str(run), "--pick", "0", "--format", "hf", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "objectives" in err[0]
    accuracy_first = ParetoFront.read(_write(tmp_path, objectives=objectives[::-1]))
    assert accuracy_first.pick(parse_pick("1")).metrics["accuracy"] == 0.40


@pytest.mark.parametrize("objectives,expect", [
    ([], "objectives: expected a non-empty list"),
    ([{"higher_is_better": True}], "objectives: item 0: expected an object with a string name"),
    ("accuracy", "objectives: expected a non-empty list"),
])
def test_malformed_objectives_name_the_file_and_field(tmp_path, objectives, expect):
    run = _write(tmp_path, objectives=objectives)
    with pytest.raises(ConfigError, match=f"pareto.json: {expect}"):
        ParetoFront.read(run)


def test_best_within_is_the_highest_rank_at_or_above_the_floor_first_of_equals():
    rows = [("a", 0.50, 3.0), ("b", 0.55, 5.0), ("c", 0.59, 5.0), ("d", 0.70, 1.0)]
    pick = lambda tol, ref: best_within(rows, tol, ref, accuracy=lambda r: r[1], rank=lambda r: r[2])  # noqa: E731
    assert pick(0.05, 0.60)[0] == "b"  # 0.55 >= 0.60 - 0.05 is within (inclusive); b and c tie: the first
    assert pick(0.0, 0.70)[0] == "d"
    assert pick(0.01, 0.80) is None
    assert best_within([], 1.0, 0.0, accuracy=lambda r: r, rank=lambda r: r) is None


def test_records_built_in_python_check_themselves():
    entry = ParetoEntry(config=CFG.to_dict(), metrics={"accuracy": 0.5, "stderr": None}, accuracy_measured=True)
    assert entry.config == CFG and entry.metrics == {"accuracy": 0.5} and entry.accuracy == 0.5
    with pytest.raises(ConfigError, match="metrics.accuracy: missing"):
        ParetoEntry(config=CFG, metrics={}, accuracy_measured=True)
    unmeasured = ParetoEntry(config=CFG, metrics={"accuracy": 0.0}, feasible=False)
    with pytest.raises(ConfigError, match=r"front\[0\].metrics.accuracy: missing or never measured"):
        ParetoFront(front=(unmeasured,))
    with pytest.raises(ConfigError, match="model: expected a string"):
        ParetoFront(front=(entry,), model=3)
    front = ParetoFront(front=(entry,), parent=dataclasses.replace(entry, metrics={"accuracy": 0.52}))
    assert front.fastest_within(0.05) is entry and front.fastest_within(0.01) is None
