"""The toolkit's evaluator against lm-evaluation-harness itself: same numbers, wall time side by side.

For each task (default arc_easy, piqa, hellaswag, winogrande) the same seeded subset (``--limit``, ``--seed``,
as ``toolkit eval --limit`` picks it) is written to a local JSONL with a local lm-eval task YAML
(``dataset_path: json`` + ``data_files``, loaded offline through ``TaskManager(include_path=...)`` with
``HF_DATASETS_OFFLINE=1``). Both sides load the same weights: the cached HF safetensors folder of
``load_model(--model)``, in float32 on the CPU, with the same number of torch threads.

* **toolkit**: ``toolkit eval --task ... --limit N --seed S --per-example`` as a fresh subprocess.
* **lm-eval**: ``lm_eval.simple_evaluate`` with an ``HFLM`` (``dtype=float32``), one task at a time, in a
  fresh subprocess of ``--lm-eval-python``, once per ``--lm-eval-batch-size`` (default ``1,32``: lm-eval's
  own default, which both ``lm_eval --batch_size`` and ``HFLM(batch_size=)`` use, and a tuned batch).

Each task runs the toolkit, then lm-eval at each batch size, right after one another. The results file
holds one comparison per batch size (``baselines``) and ``goal``: the evaluator's target (same numbers, >= 3x
faster) checked against the first batch size.

It compares acc / acc_norm, every per-choice log-likelihood, and explains each example whose prediction
differs (the margin between the top two choices against the largest log-likelihood difference seen).
Wall times: per task (the evaluation call only, model already loaded) and end to end (each subprocess
from start to exit: imports, model load, all tasks), and the *work bound*: the ratio of matmul work
lm-eval does to what the toolkit does on the same examples (``work_bound``), i.e. the speed-up an exact
evaluator can reach by saving work alone. Writes ``benchmarks/results/evaluator.json``.

**The lm-eval environment** is a separate virtualenv, never the project's: lm-eval is a cross-check, not
a dependency, and it drags in datasets, pyarrow, pandas, scikit-learn, sacrebleu, nltk ...; older
releases also pin ``huggingface_hub<1.0``, which is incompatible with the project's transformers 5.
``pip install lm-eval==0.4.13`` alone does not bring transformers (that is its ``[hf]`` extra), and an
unpinned one would not be the project's. ``--lm-eval-venv DIR`` creates the venv if it is missing and pins
it to lm-eval 0.4.13 with this environment's torch, transformers, tokenizers and accelerate versions
(re-pinning when they differ), so both sides tokenize with the same code; the install command is in the
results (``lm_eval_setup``). torch comes from the machine's local CPU wheel by its version.

**Users' tasks**: ``--task FILE_OR_YAML`` (repeatable) cross-checks a user's own task instead of the
registered ones: a ``.jsonl`` file in the common schema, or an lm-eval task YAML (``toolkit eval --task``
reads both). The lm-eval definition is written into the run's temporary folder, never next to the
user's file: for a JSONL the converted rows and a YAML as above, for a YAML lm-eval's own definition with
absolute data files (and a seeded ``--limit`` subset passed as lm-eval's ``samples``). It writes
``benchmarks/results/evaluator_user_tasks.json`` whose ``tasks`` list has, per task, ``name``,
``differing_predictions``, ``max_abs_loglik_diff`` and ``speedup`` (the evaluation call against lm-eval at
the first batch size)::

    nice -n 10 python benchmarks/evaluator.py --lm-eval-venv /work/lmeval-venv --limit 0 --task my_task.yaml

``--shared-user-tasks 200`` makes three such files from the data directory first (a 200-row common-schema
copy of arc_easy, lm-eval's own arc_easy and piqa YAMLs on 200-row local copies: ``user_task_files.py``), so
the published result regenerates from its recorded command alone::

    nice -n 5 python benchmarks/evaluator.py --lm-eval-venv /work/lmeval-venv --data-dir ../shared/data \\
        --limit 0 --shared-user-tasks 200

Registered tasks (niced: a long run)::

    nice -n 10 python benchmarks/evaluator.py --lm-eval-venv /work/lmeval-venv --data-dir ../shared/data --limit 200
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_TASKS = ("arc_easy", "winogrande", "piqa", "hellaswag")  # cheapest first


# -- the lm-eval side (runs inside --lm-eval-python; imports only the stdlib and lm_eval) -------------
def lm_eval_worker(spec_path: str) -> None:
    t_start = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import lm_eval
    import transformers
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    t_imported = time.perf_counter()
    lm = HFLM(pretrained=spec["model_folder"], dtype="float32", device="cpu", batch_size=spec["batch_size"])
    t_loaded = time.perf_counter()
    manager = TaskManager(include_path=spec["task_dir"])
    out = {
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "batch_size": spec["batch_size"],
        "import_seconds": t_imported - t_start,
        "model_load_seconds": t_loaded - t_imported,
        "tasks": {},
    }
    for job in spec["tasks"]:
        name, lm_name = job["key"], job["lm_name"]
        t0, c0 = time.perf_counter(), time.process_time()
        samples = {lm_name: job["samples"]} if job.get("samples") is not None else None
        res = lm_eval.simple_evaluate(model=lm, tasks=[lm_name], task_manager=manager, log_samples=True,
                                      samples=samples)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        r = res["results"][lm_name]
        per = []
        for s in sorted(res["samples"][lm_name], key=lambda s: s["doc_id"]):
            resps = s["filtered_resps"]
            lls = [float(x[0]) if isinstance(x, (list, tuple)) else float(x) for x in resps]
            # A YAML task's examples are named by position in its split (toolkit.tasks.lm_eval_yaml).
            ident = f"{job['id_prefix']}{s['doc_id']}" if job.get("id_prefix") is not None else s["doc"]["id"]
            per.append({"id": ident, "lls": lls, "acc": s.get("acc"), "acc_norm": s.get("acc_norm"),
                        "arguments": [list(a) for a in s.get("arguments", [])][:1]})
        out["tasks"][name] = {
            "acc": r.get("acc,none"), "acc_stderr": r.get("acc_stderr,none"),
            "acc_norm": r.get("acc_norm,none"), "acc_norm_stderr": r.get("acc_norm_stderr,none"),
            "n": len(per), "seconds": seconds, "cpu_seconds": cpu_seconds, "per_example": per,
        }
    Path(spec["out"]).write_text(json.dumps(out))


# -- the driver (project environment) ---------------------------------------------------------------
def lm_name_for(name: str) -> str:
    """An lm-eval task name for a toolkit task (a user file's name may hold a folder or dots)."""
    return "toolkit_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _yaml_for(name: str, jsonl: Path, partial: bool) -> str:
    lines = [
        f"task: {lm_name_for(name)}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(jsonl))}",
        "test_split: test",
        "output_type: multiple_choice",
        'target_delimiter: " "',
    ]
    if partial:  # lm-eval's winogrande: the options sit in the contexts, the continuation is shared
        lines += ["doc_to_text: label", "doc_to_choice: lm_contexts", "doc_to_target: lm_target"]
    else:
        lines += ["doc_to_text: context", "doc_to_choice: lm_choices", "doc_to_target: label"]
    lines += ["metric_list:"]
    for m in ("acc", "acc_norm"):
        lines += [f"  - metric: {m}", "    aggregation: mean", "    higher_is_better: true"]
    return "\n".join(lines) + "\n"


def write_lm_eval_tasks(task_data: dict, folder: Path) -> list[dict]:
    """One lm-eval task per toolkit task in ``folder`` (never next to the user's files); the worker's jobs.

    A JSONL task (registered or a user's) becomes a JSONL + YAML holding exactly the examples the toolkit
    scores (the same strings). A user's lm-eval YAML is lm-eval's to read: its own definition, renamed and
    with absolute data files (:func:`toolkit.tasks.lm_eval_yaml.portable_definition`), and a seeded subset
    passed as lm-eval's ``samples`` (the documents' positions in the split)."""
    jobs = []
    for name, data in task_data.items():
        lm_name = lm_name_for(name)
        if data.task.source == "yaml":
            import yaml

            from toolkit.tasks.lm_eval_yaml import portable_definition

            if data.num_fewshot and data.subset:
                sys.exit(f"error: {name}: a {data.num_fewshot}-shot subset draws other shots in lm-eval (its sampler "
                         "skips the documents left out); cross-check the whole split (--limit 0)")
            definition = {**portable_definition(data.task.spec.path), "task": lm_name}
            (folder / f"{lm_name}.yaml").write_text(yaml.safe_dump(definition, sort_keys=False, allow_unicode=True))
            jobs.append({"key": name, "lm_name": lm_name, "samples": list(data.indices) if data.subset else None,
                         "id_prefix": f"{data.task.name}-"})
            continue
        if data.num_fewshot:
            sys.exit(f"error: {name}: the lm-eval definition written for a JSONL task is zero-shot; "
                     "cross-check few-shot prompts with tests/golden/make_fewshot_golden.py")
        jobs.append({"key": name, "lm_name": lm_name})
        partial = data.task.scoring == "partial"
        rows = []
        for ex in data.examples:
            row = {"id": ex.id, "label": ex.label}
            if partial:
                cont = ex.requests[0][1]
                assert cont.startswith(" ")
                row.update(lm_contexts=[c for c, _ in ex.requests], lm_target=cont[1:])
            else:
                row["context"] = ex.requests[0][0]
                # lm-eval adds target_delimiter " " itself and normalises acc_norm by the bare choice.
                row["lm_choices"] = [c[1:] if c.startswith(" ") else c for _, c in ex.requests]
            rows.append(json.dumps(row))
        jsonl = folder / f"{lm_name}.jsonl"
        jsonl.write_text("\n".join(rows) + "\n")
        (folder / f"{lm_name}.yaml").write_text(_yaml_for(name, jsonl, partial))
    return jobs


def _explain(tk: list[float], lm: list[float], label: int, norm: list[int], max_diff: float) -> dict:
    import numpy as np

    out = {}
    for metric, div in (("acc", np.ones(len(norm))), ("acc_norm", np.asarray(norm, dtype=float))):
        a, b = np.asarray(tk) / div, np.asarray(lm) / div
        pa, pb = int(np.argmax(a)), int(np.argmax(b))
        if pa == pb:
            continue
        margin_tk = float(abs(a[pa] - a[pb]))
        margin_lm = float(abs(b[pa] - b[pb]))
        out[metric] = {
            "toolkit_pred": pa, "lm_eval_pred": pb, "label": label,
            "margin_toolkit": margin_tk, "margin_lm_eval": margin_lm,
            "explanation": (
                f"near-tie: choices {pa} and {pb} are {max(margin_tk, margin_lm):.2e} apart (per {'char' if metric == 'acc_norm' else 'sum'}), "
                f"within the float32 batching noise of the per-choice log-likelihoods (max |diff| {max_diff:.1e} on this example)"
                if max(margin_tk, margin_lm) <= 2 * max_diff / (div.min()) else
                "NOT a near-tie: the log-likelihoods disagree beyond float rounding"
            ),
        }
    return out


def compare(task_data: dict, tk: dict, lm: dict) -> dict:
    import numpy as np

    tasks = {}
    for name, data in task_data.items():
        t = next(r for r in tk["results"] if r["task"] == name)
        l = lm["tasks"][name]
        tk_by_id = {e["id"]: e for e in t["per_example"]}
        lm_by_id = {e["id"]: e for e in l["per_example"]}
        diffs, differing = [], []
        for ex in data.examples:
            a, b = tk_by_id[ex.id]["loglikelihoods"], lm_by_id[ex.id]["lls"]
            d = float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            diffs.append(d)
            why = _explain(a, b, ex.label, list(ex.norm_lengths), d)
            if why:
                differing.append({"id": ex.id, "line": ex.line, **why})
        diffs = np.asarray(diffs)
        tasks[name] = {
            "n": t["n"],
            "n_lm_eval": l["n"],
            "toolkit": {k: t[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")},
            "lm_eval": {k: l[k] for k in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")},
            "acc_equal": abs(t["acc"] - l["acc"]) < 1e-12,
            "acc_norm_equal": l["acc_norm"] is not None and abs(t["acc_norm"] - l["acc_norm"]) < 1e-12,
            "lm_eval_reports": t["metrics"],
            "loglikelihood_abs_diff": {"max": float(diffs.max()), "mean": float(diffs.mean()),
                                       "median": float(np.median(diffs))},
            "differing_predictions": {
                "acc": sum("acc" in d for d in differing), "acc_norm": sum("acc_norm" in d for d in differing),
                "examples": differing,
            },
            "seconds": {"toolkit": t["seconds"], "lm_eval": l["seconds"]},
            "speedup": l["seconds"] / t["seconds"],
            # CPU time of the evaluation call: what wall time is on an idle machine with 1 thread; on busy
            # shared cores, wall time mostly measures each process's share of the scheduler.
            "cpu_seconds": {"toolkit": t.get("cpu_seconds"), "lm_eval": l.get("cpu_seconds")},
            "speedup_cpu": (l["cpu_seconds"] / t["cpu_seconds"]) if t.get("cpu_seconds") and l.get("cpu_seconds") else None,
            "tokens_forward_toolkit": t["tokens_forward"],
        }
    return tasks


def work_bound(data, tokenizer, model) -> dict:
    """How much matmul work each side does on these examples, and so the most any exact evaluator that
    shares prefixes can gain over lm-eval here.

    lm-eval runs every ``context + choice`` as its own sequence (``len(ctx + cont) - 1`` tokens after its
    left truncation) with the LM head at every position; the toolkit runs each example's common prefix
    once plus the suffixes, with the LM head only on continuation tokens. Multiply-accumulates per token:
    the decoder's weights (non-embedding parameters) and ``hidden x vocab`` for the head (attention scores
    are a few per cent at these lengths and left out). Same tokenization as both evaluators.
    """
    from toolkit.elastic import parent_shape
    from toolkit.evaluate import LmEvalTokenizer, tree_token_count

    pairs, owners = [], []
    for e, ex in enumerate(data.examples):
        pairs.extend(ex.requests)
        owners.extend([e] * ex.num_choices)
    enc = LmEvalTokenizer(tokenizer).encode_pairs(pairs)
    inputs = [(c + k)[:-1] for c, k in enc]
    tk_tokens = tree_token_count(inputs, owners)  # the evaluator's tree segments
    lm_tokens = sum(len(x) for x in inputs)
    head_rows = sum(len(k) for _, k in enc)
    shape = parent_shape(model)
    body = shape.num_params(shape.full_config(), include_embeddings=False)  # one MAC per weight per token
    head = model.config.hidden_size * model.config.vocab_size
    lm_macs, tk_macs = lm_tokens * (body + head), tk_tokens * body + head_rows * head
    return {"tokens_lm_eval": lm_tokens, "tokens_toolkit": tk_tokens, "lm_head_rows_lm_eval": lm_tokens,
            "lm_head_rows_toolkit": head_rows, "macs_lm_eval": lm_macs, "macs_toolkit": tk_macs,
            "max_speedup_from_work": lm_macs / tk_macs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm-eval-python", default=None,
                    help="python of a separate virtualenv with lm-eval installed (see the module docstring)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default=None,
                    help=f"comma-separated registered tasks, run in this order (default: {','.join(DEFAULT_TASKS)}, "
                         "unless --task is given)")
    ap.add_argument("--task", action="append", default=[], metavar="FILE_OR_YAML",
                    help="a user's task: a .jsonl file in the common schema or an lm-eval task .yaml (repeatable); "
                         "its lm-eval definition goes into a temporary folder, never next to the file")
    ap.add_argument("--shared-user-tasks", type=int, default=None, metavar="N",
                    help="also cross-check three user tasks made from the data directory's first N rows "
                         "(benchmarks/user_task_files.py: a common-schema copy of arc_easy and lm-eval's own "
                         "arc_easy and piqa YAMLs on local copies), written into a temporary folder")
    ap.add_argument("--lm-eval-venv", default=None,
                    help="a virtualenv for lm-eval: created if missing, with lm-eval 0.4.13 and this environment's "
                         "torch / transformers / tokenizers / accelerate versions pinned (instead of --lm-eval-python)")
    ap.add_argument("--limit", type=int, default=200, help="seeded subset of each task (0: all of it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-eval-batch-size", default="1,32",
                    help="comma-separated lm-eval batch sizes, each run side by side with the toolkit; the first is "
                         "the baseline of the goal (default 1,32: lm-eval's default, and a tuned batch)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on both sides")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out-name", default=None,
                    help="results/<name>.json (default: evaluator, or evaluator_user_tasks with --task)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        lm_eval_worker(args.worker)
        return
    try:
        batch_sizes = list(dict.fromkeys(int(b) for b in args.lm_eval_batch_size.split(",") if b.strip()))
    except ValueError:
        batch_sizes = []
    if not batch_sizes or min(batch_sizes) < 1:
        ap.error(f"--lm-eval-batch-size: {args.lm_eval_batch_size!r} is not a comma-separated list of positive integers")
    if args.lm_eval_venv:
        args.lm_eval_python = str(ensure_lm_eval_venv(Path(args.lm_eval_venv)))
    if not args.lm_eval_python or not Path(args.lm_eval_python).is_file():
        sys.exit(f"error: --lm-eval-python: {args.lm_eval_python!r} is not a python executable. Create the lm-eval "
                 "virtualenv as the docstring of benchmarks/evaluator.py says, then pass its bin/python.")
    probe = subprocess.run([args.lm_eval_python, "-c", "import lm_eval"], capture_output=True, text=True)
    if probe.returncode != 0:
        sys.exit(f"error: --lm-eval-python {args.lm_eval_python}: cannot import lm_eval "
                 f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'unknown error'})")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import _common

    from toolkit.fileio import data_dir, optional_data_dir
    from toolkit.models import load_model
    from toolkit.tasks import get_task, load_task

    if args.shared_user_tasks is not None:  # regenerable from the recorded command alone
        import user_task_files

        import atexit
        import shutil

        made = Path(tempfile.mkdtemp(prefix="user-tasks-"))
        atexit.register(shutil.rmtree, made, True)
        shared = data_dir(args.data_dir)
        args.task = args.task + [
            str(user_task_files.write_common_copy(made / "my_arc_easy.jsonl", shared / "arc_easy" / "test.jsonl",
                                                  args.shared_user_tasks)),
            *(str(user_task_files.write_yaml_task(made, t, shared, args.shared_user_tasks)) for t in ("arc_easy", "piqa"))]
    user = bool(args.task)
    tasks_arg = args.tasks if args.tasks is not None else ("" if user else ",".join(DEFAULT_TASKS))
    registered = [n.strip() for n in tasks_arg.split(",") if n.strip()]
    root = data_dir(args.data_dir) if registered else optional_data_dir(args.data_dir)
    limit = args.limit or None
    tasks = [get_task(n, root) for n in registered + [str(Path(t).expanduser().resolve()) if Path(t).expanduser().exists()
                                                     else t for t in args.task]]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        sys.exit(f"error: two tasks are named the same: {names}")
    task_data = {t.name: load_task(t, root).select(limit, args.seed) for t in tasks}
    task_arg = {t.name: (t.name if t.source == "registry" else str(t.spec.path if t.source == "yaml" else t.file))
                for t in tasks}
    out_name = args.out_name or ("evaluator_user_tasks" if user else "evaluator")
    loaded = load_model(args.model)
    folder = loaded.folder  # the HF safetensors folder both sides load
    work = {n: work_bound(d, loaded.tokenizer, loaded.model) for n, d in task_data.items()}
    del loaded
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), TOOLKIT_PROGRESS="0")

    import transformers

    tk_walls: dict = {}  # task -> the toolkit's end-to-end seconds
    lm_runs: dict = {bs: {"tasks": {}, "walls": {}, "info": {}} for bs in batch_sizes}
    tk_hash = None
    # One task at a time: the toolkit, then lm-eval at each batch size, and the results file rewritten
    # after each task: a long run on busy shared cores leaves usable numbers for the tasks it finished.
    for name in names:
        with tempfile.TemporaryDirectory(prefix="evaluator-") as tmp:
            tmp = Path(tmp)
            one = {name: task_data[name]}
            jobs = write_lm_eval_tasks(one, tmp)
            env["HF_DATASETS_CACHE"] = str(tmp / "hf-datasets")
            # toolkit, as a user runs it (fresh process: imports + model load + the task)
            tk_out = tmp / "toolkit.json"
            tk_cmd = [sys.executable, "-m", "toolkit.cli.main", "eval", "--model", str(folder), "--task", task_arg[name],
                      "--seed", str(args.seed), "--threads", str(args.threads), "--per-example", "--out", str(tk_out)]
            tk_cmd += ["--limit", str(limit)] if limit else []
            tk_cmd += ["--data-dir", str(root)] if root is not None else []
            print(f"[{name}] toolkit:", " ".join(tk_cmd[3:]), flush=True)
            t0 = time.perf_counter()
            subprocess.run(tk_cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            tk_walls[name] = time.perf_counter() - t0
            tk = json.loads(tk_out.read_text())
            tk_hash = tk["model_hash"]
            for bs in batch_sizes:  # lm-eval, same examples, same weights
                spec = {"model_folder": str(folder), "task_dir": str(tmp), "tasks": jobs, "batch_size": bs,
                        "threads": args.threads, "out": str(tmp / "lm_eval.json")}
                (tmp / "spec.json").write_text(json.dumps(spec))
                print(f"[{name}] lm-eval: {args.lm_eval_python} (batch size {bs})", flush=True)
                t0 = time.perf_counter()
                proc = subprocess.run([args.lm_eval_python, str(Path(__file__).resolve()), "--worker",
                                       str(tmp / "spec.json")], env=env, capture_output=True, text=True)
                lm_wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    sys.exit(f"error: the lm-eval run failed:\n{proc.stderr[-3000:]}")
                lm = json.loads((tmp / "lm_eval.json").read_text())
                run = lm_runs[bs]
                run["info"] = {k: lm[k] for k in ("lm_eval_version", "transformers_version", "torch_version",
                                                  "torch_threads", "batch_size", "import_seconds", "model_load_seconds")}
                run["tasks"].update(compare(one, tk, lm))
                run["walls"][name] = {"toolkit": tk_walls[name], "lm_eval": lm_wall, "speedup": lm_wall / tk_walls[name]}
                v = run["tasks"][name]
                v["seconds_end_to_end"] = run["walls"][name]
                v["work"] = work[name]
                print(f"[{name}] batch {bs}: n={v['n']}  acc {v['toolkit']['acc']:.4f} / {v['lm_eval']['acc']:.4f}  "
                      f"acc_norm {v['toolkit']['acc_norm']:.4f} / {v['lm_eval']['acc_norm']:.4f}  "
                      f"max|dll| {v['loglikelihood_abs_diff']['max']:.1e}  eval {v['seconds']['toolkit']:.1f} s vs "
                      f"{v['seconds']['lm_eval']:.1f} s ({v['speedup']:.2f}x), cpu {v['speedup_cpu'] or 0:.2f}x "
                      f"(work bound {work[name]['max_speedup_from_work']:.2f}x); end to end {tk_walls[name]:.1f} s vs "
                      f"{lm_wall:.1f} s", flush=True)

        baselines = {f"batch_size_{bs}": _summary(run, work) for bs, run in lm_runs.items()}
        goal_run = baselines[f"batch_size_{batch_sizes[0]}"]
        summary = {
            "complete": len(tk_walls) == len(names),
            "tasks_planned": names,
            "model": args.model,
            "model_folder": str(folder),
            "model_hash": tk_hash,
            "dtype": "float32",
            "device": "cpu",
            "limit": limit,
            "seed": args.seed,
            "task_files": {n: task_arg[n] for n in names if task_arg[n] != n},
            "subset": "toolkit.tasks.TaskData.select(limit, seed): numpy default_rng(seed).choice without "
                      "replacement, kept in file order (the examples `toolkit eval --limit N --seed S` scores)",
            "threads": args.threads,
            "toolkit_transformers_version": transformers.__version__,
            "goal": {
                "issue": 5,
                "target": "the toolkit's acc/acc_norm equal lm-eval's on the same examples, and it is >= 3x faster "
                          "in wall time over the tasks, side by side in one run",
                "baseline": f"lm-eval at batch size {batch_sizes[0]}"
                            + (" (its default: `lm_eval --batch_size` and HFLM(batch_size=) both default to 1)"
                               if batch_sizes[0] == 1 else ""),
                "speedup_eval": goal_run["seconds"]["speedup_eval"],
                "speedup_end_to_end": goal_run["seconds"]["speedup_end_to_end"],
                "numbers_equal": goal_run["all_acc_equal"] and goal_run["all_acc_norm_equal"],
                "met": bool(goal_run["all_acc_equal"] and goal_run["all_acc_norm_equal"]
                            and goal_run["seconds"]["speedup_eval"] >= 3.0),
            },
            "baselines": baselines,
            "lm_eval_setup": " ".join(lm_eval_install_command(Path("LMEVAL_VENV"))),
        }
        if user:
            summary["tasks"] = user_task_rows(summary["baselines"], batch_sizes)
        path = _common.write(out_name, summary)
    for key, b in summary["baselines"].items():
        s = b["seconds"]
        print(f"{key}: total eval {s['toolkit_eval']:.1f} s vs {s['lm_eval_eval']:.1f} s ({s['speedup_eval']:.2f}x; "
              f"work bound {s['max_speedup_from_work']:.2f}x); end to end {s['toolkit_end_to_end']:.1f} s vs "
              f"{s['lm_eval_end_to_end']:.1f} s ({s['speedup_end_to_end']:.2f}x); numbers equal: "
              f"{b['all_acc_equal'] and b['all_acc_norm_equal']}")
    print(f"goal ({summary['goal']['baseline']}): {'met' if summary['goal']['met'] else 'NOT met'} -> {path}")


def lm_eval_install_command(venv: Path) -> list[str]:
    """pip install of lm-eval 0.4.13 pinned to this environment's torch / transformers / tokenizers /
    accelerate, so both sides tokenize and compute with the same code (torch's +cpu local wheel by version)."""
    from importlib.metadata import version

    torch_version = version("torch").split("+")[0]
    return [str(venv / "bin" / "pip"), "install", "-q", f"torch=={torch_version}", "lm-eval[hf]==0.4.13",
            f"transformers=={version('transformers')}", f"tokenizers=={version('tokenizers')}",
            f"accelerate=={version('accelerate')}"]


def ensure_lm_eval_venv(venv: Path) -> Path:
    """The python of ``venv`` with lm-eval and this environment's pins, creating or re-pinning it as needed."""
    from importlib.metadata import version

    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"creating the lm-eval virtualenv {venv} (minutes)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # on the base interpreter
    want = {p: version(p) for p in ("transformers", "tokenizers", "accelerate")}
    probe = subprocess.run([str(python), "-c", "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) "
                            f"for p in {sorted(want) + ['lm_eval']!r}}}))"], capture_output=True, text=True)
    have = json.loads(probe.stdout) if probe.returncode == 0 else {}
    if have.get("lm_eval") != "0.4.13" or any(have.get(p) != v for p, v in want.items()):
        print(f"pinning {venv}: lm-eval 0.4.13 with {', '.join(f'{p} {v}' for p, v in want.items())}", flush=True)
        subprocess.run(lm_eval_install_command(venv), check=True)
    return python


def user_task_rows(baselines: dict, batch_sizes: list[int]) -> list[dict]:
    """One row per user task: predictions that differ (acc or acc_norm), the largest log-likelihood
    difference, and the speed-up of the evaluation call against lm-eval at the first batch size (and each)."""
    first = baselines[f"batch_size_{batch_sizes[0]}"]["tasks"]
    rows = []
    for name, v in first.items():
        diff = v["differing_predictions"]
        rows.append({
            "name": name, "n": v["n"],
            "differing_predictions": len(diff["examples"]),
            "max_abs_loglik_diff": v["loglikelihood_abs_diff"]["max"],
            "speedup": v["speedup"],
            "speedup_by_lm_eval_batch_size": {bs: baselines[f"batch_size_{bs}"]["tasks"][name]["speedup"]
                                              for bs in batch_sizes if name in baselines[f"batch_size_{bs}"]["tasks"]},
            "acc_equal": v["acc_equal"], "acc_norm_equal": v["acc_norm_equal"],
            "toolkit": v["toolkit"], "lm_eval": v["lm_eval"],
        })
    return rows


def _summary(run: dict, work: dict) -> dict:
    """One lm-eval configuration against the toolkit, over the tasks finished so far."""
    done, walls = run["tasks"], run["walls"]
    tk_eval = sum(v["seconds"]["toolkit"] for v in done.values())
    lm_eval_s = sum(v["seconds"]["lm_eval"] for v in done.values())
    tk_cpu = sum(v["cpu_seconds"]["toolkit"] or 0 for v in done.values())
    lm_cpu = sum(v["cpu_seconds"]["lm_eval"] or 0 for v in done.values())
    macs_lm = sum(work[n]["macs_lm_eval"] for n in done)
    macs_tk = sum(work[n]["macs_toolkit"] for n in done)
    tk_e2e = sum(w["toolkit"] for w in walls.values())
    lm_e2e = sum(w["lm_eval"] for w in walls.values())
    return {
        "lm_eval": run["info"],
        "all_acc_equal": all(v["acc_equal"] for v in done.values()),
        "all_acc_norm_equal": all(v["acc_norm_equal"] for v in done.values()),
        "seconds": {
            "toolkit_eval": tk_eval, "lm_eval_eval": lm_eval_s, "speedup_eval": lm_eval_s / tk_eval,
            "toolkit_eval_cpu": tk_cpu, "lm_eval_eval_cpu": lm_cpu,
            "speedup_eval_cpu": lm_cpu / tk_cpu if tk_cpu and lm_cpu else None,
            "toolkit_end_to_end": tk_e2e, "lm_eval_end_to_end": lm_e2e, "speedup_end_to_end": lm_e2e / tk_e2e,
            "max_speedup_from_work": macs_lm / macs_tk,
            "note": "eval = the evaluation call with the model loaded; end to end = each side's fresh "
                    "process per task (imports, model load, data, evaluation), summed over tasks; the toolkit "
                    "ran once per task, and each lm-eval batch size right after it",
        },
        "tasks": done,
    }


if __name__ == "__main__":
    main()
