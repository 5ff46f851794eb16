"""The one journal (toolkit.search.journal) and its two users: search's evaluations and calibrate's measurements.

Torn lines and headers are truncated/rewritten, a different header is refused naming the fields, corrupt
lines are one-line errors naming the file and line; calibrate survives kill -9 twice (torn line, resume,
kill mid-write, resume) with every measurement intact and none repeated.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toolkit.errors import ConfigError, UserError
from toolkit.search.journal import JournalFile
from toolkit.models.tiny import tiny_profile_yaml
from toolkit.calibrate import Hardware, Measurement, Predictor, Workload, calibrate
from toolkit.search import Evaluation, EvaluationJournal, load_evaluations
from toolkit.space import ParentShape, SearchSpace, SubnetConfig

TINY = ParentShape(num_layers=6, hidden_size=64, intermediate_size=256, num_heads=4, num_kv_heads=2,
                   head_dim=16, vocab_size=256, tie_word_embeddings=True)
SPACE = SearchSpace.from_parent(TINY, layer_order=[0, 5, 1, 4, 2, 3], mlp_step=32)
HEADER = {"journal": "test", "version": 1, "repeats": 5}


# -- the journal itself -----------------------------------------------------------------------------------
def test_append_reopen_and_torn_last_line_is_truncated(tmp_path):
    path = tmp_path / "j.jsonl"
    j = JournalFile(path, HEADER)
    j.append({"a": 1})
    j.append({"a": 2})
    complete = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'{"a": 3, "b"')  # killed mid-write
    again = JournalFile(path, HEADER)
    assert [dict(r) for r in again] == [{"a": 1}, {"a": 2}] and [r.line for r in again] == [2, 3]
    assert path.read_bytes() == complete  # the fragment is gone from the file, not just skipped
    again.append({"a": 3})  # so the next record starts on its own line...
    assert [dict(r) for r in JournalFile(path, HEADER)] == [{"a": 1}, {"a": 2}, {"a": 3}]  # ...and the next resume reads it


def test_torn_header_is_an_empty_journal(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"journal": "te')  # killed while the journal was created
    j = JournalFile(path, HEADER)
    assert len(j) == 0 and json.loads(path.read_text()) == HEADER
    j.append({"a": 1})
    assert [dict(r) for r in JournalFile(path, HEADER)] == [{"a": 1}]


def test_other_header_is_refused_naming_the_fields_and_keeps_the_file(tmp_path):
    path = tmp_path / "j.jsonl"
    JournalFile(path, HEADER).append({"a": 1})
    before = path.read_bytes()
    with pytest.raises(UserError) as exc:
        JournalFile(path, {**HEADER, "repeats": 3, "extra": True})
    msg = str(exc.value)
    assert msg.startswith(f"{path}: line 1: header") and "repeats was 5, now 3" in msg and "extra was None" in msg
    assert "\n" not in msg and path.read_bytes() == before  # earlier measurements are never deleted


@pytest.mark.parametrize("line, where", [
    (b'{"a": 1, "a": 2}\n', "line 3: a: appears twice"),
    (b'[1, 2]\n', "line 3: expected a JSON object"),
    (b'{"a": \n', "line 3: invalid JSON"),
    (b'\xff\xfe\n', "line 3: not UTF-8"),
])
def test_corrupt_complete_line_names_file_and_line(tmp_path, line, where):
    path = tmp_path / "j.jsonl"
    JournalFile(path, HEADER).append({"a": 1})
    with open(path, "ab") as fh:
        fh.write(line)
        fh.write(b'{"a": 4}\n')
    with pytest.raises(ConfigError) as exc:
        JournalFile(path, HEADER)
    assert str(exc.value).startswith(f"{path}: {where}") and "\n" not in str(exc.value)


def test_readonly_journal_skips_a_torn_tail_and_writes_nothing(tmp_path):
    path = tmp_path / "j.jsonl"
    j = JournalFile(path, HEADER)
    j.append({"a": 1})
    with open(path, "ab") as fh:
        fh.write(b'{"a": 2, "b"')  # the line a live writer is in the middle of
    before = path.read_bytes()
    ro = JournalFile(path, HEADER, readonly=True)
    assert [dict(r) for r in ro] == [{"a": 1}] and path.read_bytes() == before
    with pytest.raises(RuntimeError, match="read-only"):
        ro.append({"a": 3})
    assert path.read_bytes() == before
    torn_header = tmp_path / "h.jsonl"
    torn_header.write_bytes(b'{"journal": "te')  # a journal being created right now
    assert len(JournalFile(torn_header, HEADER, readonly=True)) == 0 and torn_header.read_bytes() == b'{"journal": "te'
    assert len(JournalFile(tmp_path / "none.jsonl", HEADER, readonly=True)) == 0 and not (tmp_path / "none.jsonl").exists()


# -- search's evaluations journal ---------------------------------------------------------------------------
def evaluation(i, cfg, **over):
    return {**Evaluation(i, cfg.key(), cfg, {"accuracy": 0.5, "params": 1.0}, True).to_dict(), **over}


@pytest.mark.parametrize("bad, where", [
    ({"feasible": "false"}, "line 2: feasible: expected true or false, got string 'false'"),
    ({"index": "1"}, "line 2: index: expected a non-negative integer"),
    ({"metrics": {"accuracy": "0.5"}}, "line 2: metrics.accuracy: expected a number"),
    ({"metrics": [0.5]}, "line 2: metrics: expected an object"),
    ({"violation": "0"}, "line 2: violation: expected a number"),
    ({"error": 5, "feasible": False}, "line 2: error: expected a string or null"),
    ({"error": "boom"}, "line 2: feasible: true, but the record has a violation or an error"),
    ({"key": "0123456789abcdef"}, "line 2: key:"),
    ({"colour": 1}, "line 2: colour: unknown field"),
    # a config breaking the GQA rule (groups of 2 query heads), caught against the run's space
    ({"config": {"version": 1, "layers": [0, 1, 2, 3, 4, 5], "mlp": [256] * 6, "heads": [4] * 5 + [3]}},
     "line 2: config.heads[5]: 3 query heads break the GQA groups of 2"),
])
def test_bad_search_journal_line_names_file_line_and_field(tmp_path, bad, where):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"version": 1, "space": SPACE.to_dict(), "settings": {}, "meta": {}}))
    path = run / "evaluations.jsonl"
    small = SPACE.smallest()
    if "config" in bad:
        bad = {**bad, "key": SubnetConfig.from_dict(bad["config"]).key()}
    path.write_text(json.dumps(evaluation(0, SPACE.largest())) + "\n" + json.dumps(evaluation(1, small, **bad)) + "\n")
    with pytest.raises(ConfigError) as exc:
        load_evaluations(run)  # what report / export read: the space comes from run.json beside the journal
    msg = str(exc.value)
    assert msg.startswith(f"{path}: {where}") and "\n" not in msg


def test_cli_report_on_a_bad_journal_line_is_one_line_and_rewrites_nothing(tmp_path, capsys):
    from toolkit.cli.main import main
    from toolkit.search import SearchSettings

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"version": 1, "settings": SearchSettings().to_dict(),
                                              "space": SPACE.to_dict(), "meta": {}}))
    (run / "evaluations.jsonl").write_text(json.dumps(evaluation(0, SPACE.largest(), feasible="false")) + "\n")
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'evaluations.jsonl'}: line 1: feasible" in err and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == ["evaluations.jsonl", "run.json"]


def test_load_evaluations_and_report_leave_a_torn_journal_byte_identical(tmp_path, capsys):
    """report / export read the journal beside a live search: the torn last line is the one the search
    is writing at that moment, so they skip it and never truncate it."""
    from toolkit.cli.main import main
    from toolkit.search import SearchSettings

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"version": 1, "settings": SearchSettings().to_dict(),
                                              "space": SPACE.to_dict(), "meta": {}}))
    metrics = {"accuracy": 0.5, "accuracy_stderr": 0.01, "decode_tokens_per_s": 10.0, "params": 1.0}
    parent = Evaluation(0, SPACE.largest().key(), SPACE.largest(), metrics, True).to_dict()
    small = Evaluation(1, SPACE.smallest().key(), SPACE.smallest(), {**metrics, "accuracy": 0.4,
                                                                      "decode_tokens_per_s": 20.0}, True).to_dict()
    path = run / "evaluations.jsonl"
    torn = json.dumps(evaluation(2, SPACE.smallest()))[:40].encode()  # the line the search is writing
    path.write_bytes((json.dumps(parent) + "\n" + json.dumps(small) + "\n").encode() + torn)
    before = path.read_bytes()
    evals = load_evaluations(run)
    assert [e.to_dict() for e in evals] == [parent, small] and path.read_bytes() == before
    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    assert path.read_bytes() == before
    assert json.loads((run / "pareto.json").read_text())["evaluations"] == 2


def test_search_journal_refuses_a_duplicated_key_in_a_line_and_a_repeated_evaluation(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    line = json.dumps(evaluation(0, SPACE.largest()))
    path.write_text(line.replace('"feasible": true', '"feasible": true, "feasible": false') + "\n")
    with pytest.raises(ConfigError, match=r"line 1: feasible: appears twice"):
        EvaluationJournal(path, SPACE)
    path.write_text(line + "\n" + json.dumps(evaluation(1, SPACE.largest())) + "\n")
    with pytest.raises(ConfigError, match=r"line 2: key: .* already journaled on line 1"):
        EvaluationJournal(path, SPACE)


def test_search_journal_keeps_its_headerless_format(tmp_path):
    path = tmp_path / "evaluations.jsonl"
    j = EvaluationJournal(path, SPACE)
    assert not path.exists()  # nothing written before the first evaluation
    ev = Evaluation.from_dict(evaluation(0, SPACE.largest()))
    j.append(ev)
    assert [json.loads(l) for l in path.read_text().splitlines()] == [ev.to_dict()]
    assert EvaluationJournal(path, SPACE).get(ev.key) == ev


# -- calibrate's measurements journal ------------------------------------------------------------------------
def prior(model_hash="h0"):
    return Predictor.prior(model_hash, "test-device", "fp0", TINY, Hardware(2e11, 1e10), Workload(16, 4, 1))


def fake_measure(calls):
    def measure(cfg):
        calls.append(cfg.key())
        p = TINY.num_params(cfg)
        return Measurement(cfg, 1e-4 * p + 1, 1e-5 * p + 0.5, 4.0 * p + 1e5, {"prefill_ms": 0.01}, False)
    return measure


CONFIGS = [SPACE.largest(), SPACE.smallest()] + [SPACE.sample(__import__("numpy").random.default_rng(s)) for s in range(6)]


def test_calibrate_resumes_a_torn_journal_without_remeasuring(tmp_path):
    path = tmp_path / "p.measurements.jsonl"
    calls = []

    def interrupted(cfg):
        if len(calls) == 3:
            raise KeyboardInterrupt
        return fake_measure(calls)(cfg)

    with pytest.raises(KeyboardInterrupt):
        calibrate(prior(), CONFIGS, interrupted, path, repeats=5)
    assert path.read_text().count("\n") == 1 + 3
    with open(path, "a") as fh:
        fh.write('{"config": {"version": 1, "layers": [0')  # a kill mid-write
    calls.clear()
    fitted = calibrate(prior(), CONFIGS, fake_measure(calls), path, repeats=5)
    assert len(calls) == len(CONFIGS) - 3 and len(fitted.measurements) == len(CONFIGS)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["repeats"] == 5 and len(lines) == 1 + len(CONFIGS)
    keys = [SubnetConfig.from_dict(json.loads(l)["config"]).key() for l in lines[1:]]
    assert sorted(keys) == sorted(c.key() for c in CONFIGS)  # every one once: none glued, none repeated
    calls.clear()
    calibrate(prior(), CONFIGS, fake_measure(calls), path, repeats=5)
    assert calls == []


def test_calibrate_refuses_a_journal_of_other_settings(tmp_path):
    path = tmp_path / "p.measurements.jsonl"
    calibrate(prior(), CONFIGS[:4], fake_measure([]), path, repeats=5)
    before = path.read_bytes()
    with pytest.raises(UserError, match="repeats was 5, now 2"):
        calibrate(prior(), CONFIGS[:4], fake_measure([]), path, repeats=2)
    with pytest.raises(UserError, match="model_hash was 'h0', now 'h1'"):
        calibrate(prior("h1"), CONFIGS[:4], fake_measure([]), path, repeats=5)
    assert path.read_bytes() == before


@pytest.mark.parametrize("edit, where", [
    (lambda d: {**d, "flagged": "false"}, "line 2: flagged: expected true or false"),
    (lambda d: {**d, "prefill_ms": "3.5"}, "line 2: prefill_ms: expected a number"),
    (lambda d: {**d, "config": {**d["config"], "heads": [3] * len(d["config"]["heads"])}},
     "line 2: config.heads[0]: 3 query heads break the GQA groups of 2"),
])
def test_calibrate_journal_bad_line_names_file_and_line(tmp_path, edit, where):
    path = tmp_path / "p.measurements.jsonl"
    calibrate(prior(), CONFIGS[:4], fake_measure([]), path, repeats=5)
    lines = path.read_text().splitlines()
    lines[1] = json.dumps(edit(json.loads(lines[1])))
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as exc:
        calibrate(prior(), CONFIGS[:4], fake_measure([]), path, repeats=5)
    assert str(exc.value).startswith(f"{path}: {where}") and "\n" not in str(exc.value)


# -- calibrate: kill -9 mid-write, twice --------------------------------------------------------------------
PROFILE = tiny_profile_yaml(prompt_tokens=8, generate_tokens=2)


def _complete_lines(path):
    """The journal's complete lines and its torn tail (b"" if none)."""
    raw = path.read_bytes() if path.exists() else b""
    cut = raw.rfind(b"\n") + 1
    return raw[:cut].decode().splitlines(), raw[cut:]


def test_calibrate_survives_kill_minus_9_mid_write_twice(tmp_path, tiny_folder, monkeypatch):
    from toolkit.calibrate import latency
    from toolkit.cli.main import main

    profile, calib, out = tmp_path / "profile.yaml", tmp_path / "calib.txt", tmp_path / "predictor.json"
    profile.write_text(PROFILE)
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 50)
    args = ["calibrate", "--profile", str(profile), "--model", str(tiny_folder), "--calibration", str(calib),
            "--samples", "6", "--repeats", "1", "--out", str(out)]
    journal = out.with_suffix(".measurements.jsonl")

    # 1. a first run stops after two measurements (in-process: Ctrl-C), then a torn line as a kill leaves it
    real = latency.subnet_measure_fn

    def two_then_stop(*a, **k):
        measure, n = real(*a, **k), []

        def m(cfg):
            if len(n) == 2:
                raise KeyboardInterrupt
            n.append(1)
            return measure(cfg)
        return m

    monkeypatch.setattr(latency, "subnet_measure_fn", two_then_stop)
    assert main(args) == 130
    monkeypatch.setattr(latency, "subnet_measure_fn", real)
    first, _ = _complete_lines(journal)
    assert len(first) == 1 + 2
    fragment = first[-1][: len(first[-1]) // 2].encode()
    with open(journal, "ab") as fh:
        fh.write(fragment)

    # 2. resume in a subprocess (it drops the fragment), killed -9 in the middle of writing its second new line
    env = {**os.environ, "TOOLKIT_PROGRESS": "0", "TOOLKIT_JOURNAL_TEST_SLEEP": "0.3"}  # inside every write
    code = "import sys; from toolkit.cli.main import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and p.poll() is None:
            lines, tail = _complete_lines(journal)
            if len(lines) >= 1 + 3 and tail and tail != fragment:  # a new line done, the next half written
                break
            time.sleep(0.01)
        assert p.poll() is None, "the resumed run ended before it could be killed"
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    second, tail = _complete_lines(journal)
    assert tail and tail != fragment  # killed mid-write: a torn line of its own
    assert second[:3] == first and 1 + 3 <= len(second) < 1 + 6  # the earlier lines intact, the fragment gone

    # 3. resume again to the end: every measurement once, the journaled ones not re-measured
    assert main(args) == 0
    saved = json.loads(out.read_text())["measurements"]
    keys = [SubnetConfig.from_dict(m["config"]).key() for m in saved]
    assert len(saved) == 6 and len(set(keys)) == 6
    journaled = {SubnetConfig.from_dict(json.loads(l)["config"]).key(): json.loads(l) for l in second[1:]}
    assert all(m == journaled[k] for m, k in zip(saved, keys) if k in journaled) and len(journaled) == len(second) - 1
    assert not journal.exists()  # removed once the predictor is saved
