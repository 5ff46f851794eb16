"""Every known bad input, through the real CLI: exit 2, one line naming the file or flag, no traceback,
nothing left behind; and a seeded fuzz of mutated inputs that must each end cleanly or run.

The cases and the fuzz live in ``benchmarks/bad_inputs.py`` (which also writes the counts to
``benchmarks/results/bad_inputs.json``); this test runs the same code and asserts every outcome.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "benchmarks" / "bad_inputs.py")
bad_inputs = sys.modules["bad_inputs"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(bad_inputs)

FUZZ_CASES = 200


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return bad_inputs.build_workspace(tmp_path_factory.mktemp("bad_inputs") / "ws")


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=[c.name for c in bad_inputs.CASES])
def test_bad_input_is_one_clean_line(case, workspace, tmp_path):
    r = bad_inputs.run_case(case, workspace, tmp_path)
    assert r["outcome"] == "clean", r["detail"]


def test_the_classifier_catches_each_failure_kind(tmp_path):
    """The harness itself: a traceback, an acceptance, two lines and a left-behind file are not 'clean'."""
    O = bad_inputs.Outcome
    assert bad_inputs.classify(O(2, "", "error: a.json: x: bad\n"), "a.json", set())[0] == "clean"
    assert bad_inputs.classify(O(None, "", "", error="Traceback...\nKeyError: 'x'"), None, set())[0] == "traceback"
    assert bad_inputs.classify(O(0, "ok", ""), None, set())[0] == "silent"
    assert bad_inputs.classify(O(2, "", "error: a\nerror: b\n"), None, set())[0] == "unclean"
    assert bad_inputs.classify(O(2, "", "error: b.json: bad\n"), "a.json", set())[0] == "unclean"
    assert bad_inputs.classify(O(2, "", "error: a.json: bad\n"), "a.json", {"half.json"})[0] == "unclean"
    assert bad_inputs.classify(O(2, "", "", model_loaded=True), None, set())[0] == "unclean"


def test_fuzzed_inputs_end_cleanly_or_run(workspace, tmp_path):
    results = bad_inputs.run_fuzz(workspace, tmp_path, FUZZ_CASES, seed=0)
    s = bad_inputs.summary([], results)["fuzz"]
    bad = [r for r in results if r["outcome"] not in ("clean", "accepted_valid")]
    assert s["cases"] == FUZZ_CASES and not bad, bad[:5]
    # the fuzz reaches every kind of input, and both outcomes happen (it is neither all-valid nor all-broken)
    assert {r["input"].split("/")[0] for r in results} == {"profile", "subnet", "task", "predictor", "run"}
    assert s["clean"] > 20 and s["accepted_valid"] > 20


def test_closed_stdout_pipe_is_not_a_traceback(workspace):
    """``toolkit predict ... | head -1``: the reader goes away; the toolkit must stop quietly."""
    toolkit = [sys.executable, "-c", "import sys; from toolkit.cli.main import main; sys.exit(main())"]
    env = {**os.environ, "TOOLKIT_PROGRESS": "0"}
    p = subprocess.run(" ".join([*toolkit[:2], repr(toolkit[2]), "predict", "--predictor", str(workspace.predictor),
                                 "--full", "|", "head", "-c", "1"]),
                       shell=True, capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
