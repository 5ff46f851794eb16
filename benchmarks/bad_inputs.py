"""Bad-input audit (issue 15): every malformed input we know of, through the real CLI, plus a seeded fuzz.

    python benchmarks/bad_inputs.py [--fuzz 200] [--seed 0]   # -> benchmarks/results/bad_inputs.json

Each *case* is a malformed input a user could hand the toolkit (a file or a flag). It is run through the
real command line, ``toolkit.cli.main.main(argv)``, in this process (a subprocess per case would spend
~5 s importing torch each time), on a tiny random Llama model and files made here. An outcome is:

* ``clean``: exit code 2, exactly one line on stderr, starting ``error:`` and naming the file (or the
  flag), no traceback, no file left behind in the case's folder, and -- for cases marked
  ``before_load`` -- refused before any model was loaded;
* ``traceback``: an exception escaped ``main`` (or a traceback was printed);
* ``silent``: exit code 0 -- the bad input was accepted;
* ``unclean``: anything else (several lines, a file left behind, the model loaded first, ...).

The *fuzz* takes valid files (a device profile, a sub-network config, a task file, a predictor JSON and
a search run folder), mutates each one with a seeded ``numpy.random.Generator`` (a JSON value deleted,
retyped or pushed out of range; bytes truncated, flipped or replaced) and runs the command that reads
it. Every outcome must be a clean exit 2 or a valid input that runs (exit 0).

``tests/test_bad_inputs.py`` runs the same cases and the same fuzz and asserts every one is clean.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import os
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toolkit.models.tiny import tiny_profile_yaml  # noqa: E402 (after the path set-up)

PROFILE = tiny_profile_yaml()
SUBNET = {"version": 1, "layers": [0, 1, 3], "mlp": [256, 128, 64], "heads": [4, 2, 4]}  # of llama_tiny


class ModelLoaded(Exception):
    """Raised by the patched loader in ``before_load`` cases: the input should have been refused first."""


# -- the workspace: a tiny model and one valid file of every kind ---------------------------------
@dataclasses.dataclass
class Workspace:
    root: Path
    model: Path
    calibration: Path
    profile: Path
    predictor: Path
    task: Path
    subnet: Path
    run: Path

    @property
    def model_args(self) -> list[str]:
        return ["--model", str(self.model), "--calibration", str(self.calibration)]

    def search_args(self, out: Path) -> list[str]:
        return ["search", "--profile", str(self.profile), "--predictor", str(self.predictor), *self.model_args,
                "--task", str(self.task), "--limit", "8", "--evals", "4", "--population", "4", "--seed", "0",
                "--out", str(out), "--allow-chance"]


def build_workspace(root: Path) -> Workspace:
    """Make the tiny model and the valid files (a predictor and a small search run, through the CLI)."""
    from toolkit.models.tiny import byte_tokenizer, llama_tiny

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    model = root / "tiny"
    llama_tiny().save_pretrained(model)
    byte_tokenizer().save_pretrained(model)
    calibration = root / "calib.txt"
    calibration.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    profile = root / "profile.yaml"
    profile.write_text(PROFILE)
    task = root / "task.jsonl"
    task.write_text("".join(json.dumps({"id": f"q{i}", "context": f"Question: {i} plus {i}?\nAnswer:",
                                        "choices": [f" {2 * i}", f" {i}", " no"], "label": 0}) + "\n"
                            for i in range(12)))
    subnet = root / "subnet.json"
    subnet.write_text(json.dumps(SUBNET))
    ws = Workspace(root, model, calibration, profile, root / "predictor.json", task, subnet, root / "run")
    for argv in (["calibrate", "--profile", str(profile), *ws.model_args, "--samples", "0", "--out", str(ws.predictor)],
                 ws.search_args(ws.run)):
        out = run_cli(argv, root)
        if out.rc != 0:
            raise RuntimeError(f"workspace: {' '.join(argv[:1])} failed (rc {out.rc}): {out.stderr or out.error}")
    return ws


# -- running one command ---------------------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    rc: int | None
    stdout: str
    stderr: str
    error: str | None = None  # the traceback of an exception that escaped main()
    model_loaded: bool = False


def run_cli(argv: list[str], cwd: Path, forbid_load: bool = False) -> Outcome:
    """``toolkit ARGV`` in this process, with stdout/stderr captured and (optionally) model loading forbidden."""
    import toolkit.models
    import toolkit.models.loading
    from toolkit.cli.main import main

    real = toolkit.models.loading.load_model
    loaded = []

    def refuse(*a, **k):
        loaded.append(a)
        raise ModelLoaded("the model was loaded before the bad input was refused")

    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    if forbid_load:
        toolkit.models.load_model = toolkit.models.loading.load_model = refuse
    rc, error = None, None
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse
                rc = exc.code if isinstance(exc.code, int) else 2
            except ModelLoaded:
                pass
            except BaseException:  # noqa: BLE001 -- a traceback is exactly what we count
                error = traceback.format_exc()
    finally:
        os.chdir(old_cwd)
        toolkit.models.load_model = toolkit.models.loading.load_model = real
    return Outcome(rc, out.getvalue(), err.getvalue(), error, bool(loaded))


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def classify(o: Outcome, names: str | None, left_behind: set[str]) -> tuple[str, str]:
    """(kind, why) of one bad-input outcome: kind is clean | traceback | silent | unclean."""
    lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    if o.error is not None or "Traceback (most recent call last)" in o.stderr:
        return "traceback", (o.error or o.stderr).strip().splitlines()[-1]
    if o.model_loaded:
        return "unclean", "the model was loaded before the input was refused"
    if o.rc == 0:
        return "silent", "accepted (exit 0)"
    if o.rc != 2:
        return "unclean", f"exit code {o.rc}: {lines[-1] if lines else ''}"
    if len(lines) != 1:
        return "unclean", f"{len(lines)} lines on stderr: {lines[:3]}"
    if not lines[0].startswith("error:"):
        return "unclean", f"not an error line: {lines[0]}"
    if names and names not in lines[0]:
        return "unclean", f"does not name {names!r}: {lines[0]}"
    if left_behind:
        return "unclean", f"left behind: {sorted(left_behind)[:3]}"
    return "clean", lines[0]


# -- the cases ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    item: str  # issue 15's item
    build: Callable[[Workspace, Path], tuple[list[str], str | None]]  # -> (argv, what the error must name)
    before_load: bool = False  # refused before any model is loaded
    never_created: tuple[str, ...] = ()  # paths (relative to the case folder) that must not appear


def _write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def _tiny_config(ws: Workspace) -> dict:
    return json.loads((ws.model / "config.json").read_text())


def _model_folder(ws: Workspace, d: Path, config: Any = None, weights: bool = True, **extra: bytes | str) -> Path:
    """A copy of the tiny model's folder with its config.json / weights replaced."""
    folder = d / "model"
    shutil.copytree(ws.model, folder)
    if config is not None:
        _write(folder / "config.json", config if isinstance(config, (str, bytes)) else json.dumps(config))
    if not weights:
        for p in folder.glob("*.safetensors"):
            p.unlink()
    for name, data in extra.items():
        _write(folder / name.replace("__", "."), data)
    return folder


def _info(folder: Path) -> list[str]:
    return ["info", str(folder), "--no-importance", "--json"]


def _pickle_bomb(marker: Path) -> bytes:
    """A pickle that, if unpickled, creates ``marker``: proof that user pickles were (not) loaded."""
    import pickle

    class Bomb:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps({"model.embed_tokens.weight": Bomb()})


def _predict(ws: Workspace, d: Path, cfg: Any) -> tuple[list[str], str]:
    f = _write(d / "subnet.json", cfg if isinstance(cfg, (str, bytes)) else json.dumps(cfg))
    return ["predict", "--predictor", str(ws.predictor), "--config", str(f)], "subnet.json"


def _predictor_with(ws: Workspace, d: Path, edit: Callable[[dict], None]) -> tuple[list[str], str]:
    pred = json.loads(ws.predictor.read_text())
    edit(pred)
    f = _write(d / "predictor.json", json.dumps(pred))
    return ["predict", "--predictor", str(f), "--full"], "predictor.json"


def _run_copy(ws: Workspace, d: Path, file: str | None = None, data: str | bytes | None = None) -> Path:
    run = d / "run"
    shutil.copytree(ws.run, run)
    if file is not None:
        _write(run / file, data)
    return run


def _journal_with(ws: Workspace, d: Path, edit: Callable[[list[str]], list[str]]) -> tuple[list[str], str]:
    run = _run_copy(ws, d)
    journal = run / "evaluations.jsonl"
    journal.write_text("".join(line + "\n" for line in edit(journal.read_text().splitlines())))
    return ["report", str(run), "--json"], "evaluations.jsonl"


def _edit_last_record(fn: Callable[[dict], None]) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        rec = json.loads(lines[-1])
        fn(rec)
        return [*lines[:-1], json.dumps(rec)]

    return edit


def _set(d: dict, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for k in head:
        d = d[k]
    d[last] = value


def _export(ws: Workspace, d: Path, *extra: str, run: Path | None = None) -> list[str]:
    return ["export", str(run or ws.run), "--out", str(d / "export"), "--format", "hf",
            "--calibration", str(ws.calibration), *extra]


def _pareto_with(ws: Workspace, d: Path, edit: Callable[[dict], Any]) -> tuple[list[str], str]:
    run = _run_copy(ws, d)
    pareto = json.loads((run / "pareto.json").read_text())
    new = edit(pareto)
    (run / "pareto.json").write_text(json.dumps(pareto if new is None else new))
    return _export(ws, d, run=run), "pareto.json"


def _task_rows(ws: Workspace, d: Path, rows: list[dict] | str) -> tuple[list[str], str]:
    text = rows if isinstance(rows, str) else "".join(json.dumps(r) + "\n" for r in rows)
    f = _write(d / "bad_task.jsonl", text)
    return ["eval", *ws.model_args, "--task", str(f), "--json"], "bad_task.jsonl"


def _calibrate(ws: Workspace, d: Path, *extra: str, out: Path | None = None) -> list[str]:
    return ["calibrate", "--profile", str(ws.profile), *ws.model_args, "--samples", "2", "--repeats", "1",
            "--out", str(out or d / "predictor.json"), *extra]


def _search(ws: Workspace, d: Path, *extra: str) -> list[str]:
    return [*ws.search_args(d / "run"), *extra]


ROW = {"id": "r", "context": "Question: one?\nAnswer:", "choices": [" a", " b"], "label": 0}

CASES: tuple[Case, ...] = (
    # item 2: a config that would build a default-size model
    Case("config-without-shape", "2", lambda ws, d: (
        _info(_model_folder(ws, d, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})), "config.json")),
    Case("config-huge-model", "2", lambda ws, d: (
        _info(_model_folder(ws, d, {**_tiny_config(ws), "hidden_size": 65536, "intermediate_size": 262144,
                                    "num_hidden_layers": 400, "num_attention_heads": 512, "num_key_value_heads": 512})),
        "model")),
    # item 3: pickled weights are refused before anything unpickles them
    Case("pickle-weights-only", "3", lambda ws, d: (
        _info(_model_folder(ws, d, weights=False, pytorch_model__bin=_pickle_bomb(d / "PWNED"))), "model"),
        never_created=("PWNED",)),
    # item 4: tracebacks
    Case("binary-subnet-config", "4", lambda ws, d: _predict(ws, d, bytes(range(256)) * 4), before_load=True),
    Case("binary-predictor", "4", lambda ws, d: (
        ["predict", "--predictor", str(_write(d / "predictor.json", b"\xff\xfe\x00" * 100)), "--full"], "predictor.json")),
    Case("predictor-string-coefficients", "4", lambda ws, d: _predictor_with(
        ws, d, lambda p: p.update(coefficients={k: ["x"] * len(v) for k, v in p["coefficients"].items()}))),
    Case("model-folder-without-weights", "4", lambda ws, d: (_info(_model_folder(ws, d, weights=False)), "model")),
    Case("config-json-is-a-list", "4", lambda ws, d: (_info(_model_folder(ws, d, [1, 2, 3])), "config.json")),
    Case("config-json-binary", "4", lambda ws, d: (_info(_model_folder(ws, d, b"\x00\xff" * 64)), "config.json")),
    Case("gguf-bad-magic", "4", lambda ws, d: (_info(_write(d / "m.gguf", b"NOPE" + bytes(200))), "m.gguf")),
    Case("gguf-truncated", "4", lambda ws, d: (_info(_write(d / "m.gguf", b"GGUF\x03\x00")), "m.gguf")),
    Case("safetensors-truncated", "4", lambda ws, d: (_info(_truncated_safetensors(ws, d)), "model.safetensors")),
    Case("calibrate-repeats-0", "4", lambda ws, d: (_calibrate(ws, d, "--repeats", "0"), "--repeats"),
         before_load=True),
    Case("calibrate-out-is-a-directory", "4", lambda ws, d: (
        _calibrate(ws, d, out=_mkdir(d / "outdir")), "outdir"), before_load=True),
    Case("manifest-is-a-list", "4", lambda ws, d: (
        ["verify", str(_write(d / "art" / "manifest.json", "[1, 2]").parent)], "manifest.json")),
    Case("run-json-truncated-on-resume", "4", lambda ws, d: (
        [*ws.search_args(_truncate(_run_copy(ws, d), "run.json")), "--resume"], "run.json")),
    Case("run-json-truncated-on-report", "4", lambda ws, d: (
        ["report", str(_truncate(_run_copy(ws, d), "run.json")), "--json"], "run.json")),
    Case("pareto-entry-without-config", "4", lambda ws, d: _pareto_with(
        ws, d, lambda p: [f.pop("config") for f in p["front"]] and None), before_load=True),
    Case("pareto-is-a-list", "4", lambda ws, d: _pareto_with(ws, d, lambda p: [p]), before_load=True),
    Case("pick-fastest-within-abc", "4", lambda ws, d: (_export(ws, d, "--pick", "fastest-within:abc"), "--pick"),
         before_load=True),
    # item 5: silent acceptances
    Case("predict-heads-above-parent", "5", lambda ws, d: _predict(ws, d, {**SUBNET, "heads": [4, 2, 8]}),
         before_load=True),
    Case("predict-heads-not-gqa-multiple", "5", lambda ws, d: _predict(ws, d, {**SUBNET, "heads": [4, 3, 4]}),
         before_load=True),
    Case("predict-mlp-wider-than-parent", "5", lambda ws, d: _predict(ws, d, {**SUBNET, "mlp": [256, 512, 64]}),
         before_load=True),
    Case("task-row-with-one-choice", "5", lambda ws, d: _task_rows(ws, d, [ROW, {**ROW, "choices": [" a"]}]),
         before_load=True),
    Case("search-limit-negative", "5", lambda ws, d: (_search(ws, d, "--limit", "-5"), "--limit"), before_load=True),
    Case("search-max-params-negative", "5", lambda ws, d: (_search(ws, d, "--max-params", "-1"), "--max-params"),
         before_load=True),
    Case("search-min-accuracy-above-1", "5", lambda ws, d: (_search(ws, d, "--min-accuracy", "2.0"),
                                                            "--min-accuracy"), before_load=True),
    Case("search-eval-threads-0", "5", lambda ws, d: (_search(ws, d, "--eval-threads", "0"), "--eval-threads"),
         before_load=True),
    Case("journal-feasible-is-a-string", "5", lambda ws, d: _journal_with(
        ws, d, _edit_last_record(lambda r: r.update(feasible="false")))),
    Case("journal-config-breaks-gqa", "5", lambda ws, d: _journal_with(
        ws, d, _edit_last_record(lambda r: _set(r, "config.heads", [3] * len(r["config"]["heads"]))))),
    Case("journal-duplicated-key", "5", lambda ws, d: _journal_with(
        ws, d, lambda lines: [*lines[:-1], lines[-1][:-1] + ', "key": "dup"}'])),
    Case("journal-duplicated-evaluation", "5", lambda ws, d: _journal_with(ws, d, lambda lines: [*lines, lines[-1]])),
    Case("export-pick-negative", "5", lambda ws, d: (_export(ws, d, "--pick", "-1"), "--pick"), before_load=True),
    # item 8: argument errors before the model loads
    Case("calibrate-samples-1", "8", lambda ws, d: (_calibrate(ws, d, "--samples", "1"), "--samples"),
         before_load=True),
    Case("export-format-foo", "8", lambda ws, d: (_export(ws, d, "--format", "foo"), "--format"), before_load=True),
    Case("task-file-bad-json-line", "8", lambda ws, d: _task_rows(ws, d, json.dumps(ROW) + "\n{not json\n"),
         before_load=True),
    Case("task-file-missing", "8", lambda ws, d: (["eval", *ws.model_args, "--task", str(d / "nope.jsonl")],
                                                  "nope.jsonl"), before_load=True),
    Case("subnet-config-missing", "8", lambda ws, d: (
        ["eval", *ws.model_args, "--task", str(ws.task), "--subnet", str(d / "nope.json")], "nope.json"),
        before_load=True),
    # profiles (already clean; kept so they stay so)
    Case("profile-binary", "profiles", lambda ws, d: (
        ["profile", "validate", str(_write(d / "p.yaml", b"\xff\x00\xfe" * 50))], "p.yaml")),
    Case("profile-negative-memory", "profiles", lambda ws, d: (
        ["profile", "validate", str(_write(d / "p.yaml", PROFILE + "memory: {usable_bytes: -5}\n"))], "p.yaml")),
)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


def _truncate(run: Path, name: str) -> Path:
    f = run / name
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    return run


def _truncated_safetensors(ws: Workspace, d: Path) -> Path:
    folder = _model_folder(ws, d)
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    return folder


def run_case(case: Case, ws: Workspace, root: Path) -> dict[str, Any]:
    d = root / case.name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    argv, names = case.build(ws, d)
    before = files_under(d)
    o = run_cli(argv, d, forbid_load=case.before_load)
    left = files_under(d) - before
    kind, why = classify(o, names, left)
    created = [p for p in case.never_created if (d / p).exists()]
    if created and kind != "traceback":
        kind, why = "unclean", f"created {created} (code from the input ran)"
    return {"case": case.name, "item": case.item, "outcome": kind, "detail": why}


# -- the fuzz -------------------------------------------------------------------------------------
def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:4]):
            out += _paths(v, prefix + (i,))
    return out


REPLACEMENTS = (None, "x", -1, 0, 1, 1e30, -1e30, 0.5, True, [], {}, [1, 2], "", 10 ** 12)


def mutate_json(obj: Any, rng: np.random.Generator) -> tuple[Any, str]:
    """One seeded change to a JSON value: (the changed copy, what was changed)."""
    obj = copy.deepcopy(obj)
    paths = _paths(obj)
    path = paths[int(rng.integers(len(paths)))]
    where = ".".join(map(str, path)) or "<root>"
    if not path:
        new = REPLACEMENTS[int(rng.integers(len(REPLACEMENTS)))]
        return new, f"<root> = {new!r}"
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    last = path[-1]
    op = int(rng.integers(3))
    if op == 0 and isinstance(parent, dict):
        del parent[last]
        return obj, f"del {where}"
    if op == 1 and isinstance(parent[last], (int, float)) and not isinstance(parent[last], bool):
        factor = float(rng.choice([-1, 0, 1000, 0.5, 1e9]))
        parent[last] = parent[last] * factor
        return obj, f"{where} *= {factor:g}"
    parent[last] = REPLACEMENTS[int(rng.integers(len(REPLACEMENTS)))]
    return obj, f"{where} = {parent[last]!r}"


def mutate_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    op = int(rng.integers(4))
    n = len(data)
    if op == 0:
        cut = int(rng.integers(n))
        return data[:cut], f"truncated to {cut} of {n} bytes"
    if op == 1:
        b = bytearray(data)
        for i in rng.integers(n, size=max(1, n // 50)):
            b[int(i)] = int(rng.integers(256))
        return bytes(b), f"{max(1, n // 50)} random bytes"
    if op == 2:
        i = int(rng.integers(n))
        return data[:i] + bytes(rng.integers(256, size=16).tolist()) + data[i:], f"16 random bytes at {i}"
    return b"", "emptied"


def _mutated_text(text: str, rng: np.random.Generator, parse, dump, log: list[str]) -> bytes:
    if rng.random() < 0.7:
        try:
            obj, what = mutate_json(parse(text), rng)
            out = dump(obj).encode()
            log.append(what)
            return out
        except (TypeError, ValueError):
            pass
    out, what = mutate_bytes(text.encode(), rng)
    log.append(what)
    return out


def fuzz_inputs(ws: Workspace, rng: np.random.Generator, d: Path, log: list[str]) -> tuple[str, list[str]]:
    """One mutated input: (what it fuzzes, argv of the command that reads it); ``log`` gets the change."""
    import yaml

    kind = ("profile", "subnet", "task", "predictor", "run")[int(rng.integers(5))]
    if kind == "profile":
        f = _write(d / "p.yaml", _mutated_text(ws.profile.read_text(), rng, yaml.safe_load, yaml.safe_dump, log))
        return kind, ["profile", "validate", str(f)]
    if kind == "subnet":
        f = _write(d / "subnet.json", _mutated_text(ws.subnet.read_text(), rng, json.loads, json.dumps, log))
        return kind, ["predict", "--predictor", str(ws.predictor), "--config", str(f)]
    if kind == "task":
        lines = ws.task.read_text().splitlines()[:6]
        i = int(rng.integers(len(lines)))
        lines[i] = _mutated_text(lines[i], rng, json.loads, json.dumps, log).decode("utf-8", "replace").replace("\n", " ")
        f = _write(d / "task.jsonl", "\n".join(lines) + "\n")
        return kind, ["eval", *ws.model_args, "--task", str(f), "--json"]
    if kind == "predictor":
        f = _write(d / "predictor.json", _mutated_text(ws.predictor.read_text(), rng, json.loads, json.dumps, log))
        return kind, ["predict", "--predictor", str(f), "--full"]
    run = _run_copy(ws, d)
    name = ("run.json", "pareto.json", "evaluations.jsonl")[int(rng.integers(3))]
    if name == "evaluations.jsonl":
        lines = (run / name).read_text().splitlines()
        i = int(rng.integers(len(lines)))
        lines[i] = _mutated_text(lines[i], rng, json.loads, json.dumps, log).decode("utf-8", "replace").replace("\n", " ")
        _write(run / name, "\n".join(lines) + "\n")
    else:
        _write(run / name, _mutated_text((run / name).read_text(), rng, json.loads, json.dumps, log))
    return f"run/{name}", ["report", str(run), "--json"]


def run_fuzz(ws: Workspace, root: Path, n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    results = []
    for i in range(n):
        d = root / f"fuzz{i:04d}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        log: list[str] = []
        kind, argv = fuzz_inputs(ws, rng, d, log)
        o = run_cli(argv, d)
        if o.rc == 0 and o.error is None:
            outcome, why = "accepted_valid", ""
        else:
            outcome, why = classify(o, None, set())
        results.append({"i": i, "input": kind, "mutation": "; ".join(log), "outcome": outcome, "detail": why})
        shutil.rmtree(d, ignore_errors=True)
    return results


def summary(cases: list[dict], fuzz: list[dict]) -> dict[str, Any]:
    count = lambda rs, k: sum(r["outcome"] == k for r in rs)  # noqa: E731
    return {"cases": len(cases), "clean": count(cases, "clean"), "tracebacks": count(cases, "traceback"),
            "silent": count(cases, "silent"), "unclean": count(cases, "unclean"),
            "fuzz": {"cases": len(fuzz), "clean": count(fuzz, "clean"), "tracebacks": count(fuzz, "traceback"),
                     "accepted_valid": count(fuzz, "accepted_valid"), "unclean": count(fuzz, "unclean")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fuzz", type=int, default=200, help="mutated inputs (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    import tempfile

    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("TOOLKIT_PROGRESS", "0")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        ws = build_workspace(root / "ws")
        cases = [run_case(c, ws, root / "cases") for c in CASES]
        fuzz = run_fuzz(ws, root / "fuzz", args.fuzz, args.seed)
    from _common import write

    s = summary(cases, fuzz)
    path = write("bad_inputs", {**s, "seed": args.seed, "results": cases,
                                "fuzz_results": fuzz,
                                "fuzz_inputs": {k: sum(r["input"] == k for r in fuzz) for k in sorted({r["input"] for r in fuzz})}})
    for r in cases:
        if r["outcome"] != "clean":
            print(f"{r['outcome']:9s} {r['case']}: {r['detail']}")
    print(json.dumps(s))
    print(f"wrote {path}")
    return 0 if s["tracebacks"] == s["silent"] == s["unclean"] == 0 and s["fuzz"]["tracebacks"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
