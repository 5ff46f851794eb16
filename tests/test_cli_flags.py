"""The CLI's shared contract: every flag has help, and --json / -v / -q behave the same on every command."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from toolkit.cli.common import configure_logging
from toolkit.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, name: str = "toolkit"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from _commands(child, f"{name} {child_name}")


COMMANDS = dict(_commands(build_parser()))


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "toolkit"])
def test_every_flag_has_help(name):
    missing = [a.option_strings or a.dest for a in COMMANDS[name]._actions
               if not isinstance(a, argparse._SubParsersAction) and not a.help]
    assert not missing, f"{name}: flags without help: {missing}"


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "toolkit"])
def test_every_command_takes_json_verbose_quiet(name):
    options = {o for a in COMMANDS[name]._actions for o in a.option_strings}
    assert {"--json", "-v", "--verbose", "-q", "--quiet"} <= options


def test_logging_levels_follow_v_and_q():
    log = logging.getLogger("toolkit")
    try:
        configure_logging()
        assert log.level == logging.INFO
        configure_logging(quiet=True)
        assert log.level == logging.WARNING
        configure_logging(verbose=1)
        assert log.level == logging.DEBUG
    finally:
        configure_logging()


def test_quiet_hides_info_but_not_warnings(capsys):
    log = logging.getLogger("toolkit.some_stage")
    try:
        configure_logging(quiet=True)
        log.info("a progress note")
        log.warning("a real problem")
        err = capsys.readouterr().err
        assert "a real problem" in err and "a progress note" not in err
    finally:
        configure_logging()


def test_limit_says_the_same_in_eval_and_search():
    """--limit 0 is every example in both commands, and their help says so in the same words."""
    helps = {name: next(a.help for a in COMMANDS[f"toolkit {name}"]._actions if "--limit" in a.option_strings)
             for name in ("eval", "search")}
    assert helps["eval"] == helps["search"] and "0 = all" in helps["eval"]
    assert COMMANDS["toolkit eval"].parse_args(["--limit", "0"]).limit == 0


# -- the output rule: readable for people by default, exactly one JSON document on stdout with --json ----
@pytest.fixture
def predictor_file(tmp_path):
    from toolkit.calibrate import Hardware, Predictor, Workload
    from toolkit.space import ParentShape

    path = tmp_path / "predictor.json"
    Predictor.prior("h", "test-device", "fp0", ParentShape(4, 64, 256, 4, 2, 16, 256, True), Hardware(1e11, 1e10),
                    Workload(16, 4, 1)).save(path)
    return path


def test_predict_prints_one_json_object_with_json_and_a_table_without(predictor_file, capsys):
    argv = ["predict", "--predictor", str(predictor_file), "--full"]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # the whole of stdout is one JSON object
    assert isinstance(doc, dict)
    assert {"prefill_ms", "decode_ms_per_token", "peak_mem_bytes", "decode_tokens_per_s", "params", "profile",
            "calibrated"} <= set(doc)  # the keys it always had
    assert doc["profile"] == "test-device" and doc["calibrated"] is False
    assert main(argv) == 0
    table = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(table)
    for key, value in doc.items():  # the table holds the same numbers (floats to 4 digits), one row each
        row = next(line for line in table.splitlines() if f" {key} " in line)
        assert (f"{value:.4g}" if isinstance(value, float) else str(value)) in row, row


def test_calibrate_prints_one_json_object_with_json_and_a_table_without(tmp_path, tiny_folder, capsys):
    from toolkit.models.tiny import tiny_profile_yaml

    profile = tmp_path / "profile.yaml"
    profile.write_text(tiny_profile_yaml())
    argv = ["calibrate", "--profile", str(profile), "--model", str(tiny_folder), "--samples", "0"]
    assert main([*argv, "--out", str(tmp_path / "a.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(tmp_path / "a.json"), "calibrated": False}
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 0
    table = capsys.readouterr().out
    assert "calibrated" in table and str(tmp_path / "b.json") in table and not table.lstrip().startswith("{")


def test_verify_json_is_one_document_that_lists_every_folder(tmp_path, capsys):
    import shutil

    from toolkit.elastic import extract
    from toolkit.export import ExportRequest, export_subnet
    from toolkit.models.tiny import byte_tokenizer, llama_tiny
    from toolkit.space import SubnetConfig

    cfg = SubnetConfig((0, 1), (64, 64), (2, 2))
    out = tmp_path / "export"
    req = ExportRequest(formats=("hf",), out=out, threads=1, prompt_tokens=8, generate_tokens=2, repeats=1)
    export_subnet(extract(llama_tiny(), cfg), byte_tokenizer(), req, source={"model": "tiny", "model_hash": "h"},
                  subnet=cfg.to_dict())
    shutil.copytree(out / "hf", out / "hf-copy")  # two format folders under one --out
    for folder, n in ((out, 2), (out / "hf", 1)):  # the same shape for a whole export and for one folder
        assert main(["verify", str(folder), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["dir"] == str(folder) and doc["ok"] is True and len(doc["folders"]) == n
        assert all(f["ok"] and f["format"] == "hf" and f["method"] == "teacher-forced" for f in doc["folders"])
    assert main(["verify", str(out)]) == 0  # for people: one line per folder
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines] == [["ok", "hf", str(out / "hf")], ["ok", "hf", str(out / "hf-copy")]]
    (out / "hf-copy" / "config.json").write_text("{}")  # the second folder fails: nothing on stdout, one line on stderr
    assert main(["verify", str(out), "--json"]) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == "" and len(stderr.strip().splitlines()) == 1 and "config.json" in stderr


@pytest.mark.parametrize("argv", [["profile", "ls"], ["profile", "show", "h100-sxm"],
                                  ["profile", "validate", str(Path(__file__).parents[1] / "profiles" / "h100-sxm.yaml")]])
def test_profile_subcommands_honour_json(argv, capsys):
    import json

    from toolkit.cli.main import main

    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # one document, nothing else on stdout
    assert isinstance(doc, dict) and doc
    assert main(argv) == 0
    text = capsys.readouterr().out
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_output_flags_before_a_nested_subcommand_are_kept():
    """argparse copies a sub-parser's defaults over its parent's values: `profile --json ls` must keep --json."""
    parser = build_parser()
    assert parser.parse_args(["profile", "--json", "ls"]).json is True
    assert parser.parse_args(["profile", "-q", "ls"]).quiet is True
    assert parser.parse_args(["profile", "ls", "--json"]).json is True
    assert parser.parse_args(["profile", "ls"]).json is False


def test_quiet_does_not_outlive_its_command(monkeypatch, capsys):
    import os

    from toolkit.cli.main import main

    monkeypatch.delenv("TOOLKIT_PROGRESS", raising=False)
    assert main(["profile", "ls", "-q", "--json"]) == 0
    assert "TOOLKIT_PROGRESS" not in os.environ


def test_search_wants_accuracy_first(capsys):
    from toolkit.cli.main import main

    rc = main(["search", "--model", "x", "--profile", "h100-sxm", "--predictor", "p.json", "--task", "arc_easy",
               "--out", "unused", "--objectives", "decode_tokens_per_s,accuracy"])
    assert rc == 2 and "--objectives: accuracy must come first" in capsys.readouterr().err


def test_the_table_for_people_flattens_nested_results(capsys):
    import argparse

    from toolkit.cli.common import emit

    emit(argparse.Namespace(json=False), {"out": "p.json", "cv": {"prefill_ms": {"mape_pct": 47.485705486}}, "n": 8})
    out = capsys.readouterr().out
    assert "cv.prefill_ms.mape_pct" in out and "47.49" in out and "47.4857" not in out and "p.json" in out
