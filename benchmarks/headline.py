"""The headline (issues 9, 16): the searched front vs pruning baselines, on examples the search never saw.

At matched sizes, on several tasks, as paired differences to the original model.

Rows, all re-evaluated here on the *report* part of every ``--tasks`` task (:meth:`toolkit.tasks.TaskData.split`;
the search selected its front on the disjoint *search* part, so the front's accuracies in the run's journal
are optimistic and never reused):

* ``parent``: the ORIGINAL model the super-network was trained from (``--parent``, by default the ``model``
  field of the super-network folder's ``finetune.json``), the reference of every difference;
* ``supernet_full``: the super-network's own full network (what training did to the full width);
* ``nas_i``: up to ``--points`` front members of the run spread over their sizes, and for each the two
  pruning baselines with the closest non-embedding parameter count, cut from the same super-network
  (:mod:`toolkit.baselines`): ``layer_drop_i`` (ShortGPT-style) and ``uniform_mlp_i``.

Differences to the parent are paired (same examples): :func:`toolkit.stats.paired_from_results` gives the
delta with a 95 % paired-bootstrap interval and McNemar's p. Decode speed of every row, the parent's full
network included, is measured side by side in this one run with the profile's threads and workload (the
parent first and last, the speed-ups against the mean of the two), so a ratio never mixes runs.

Resumable: each (row, task) evaluation, per-example predictions included, goes into
``<results>/headline.partial.json`` (atomically) as soon as it exists, keyed by (model hash, config key,
task, split, report limit, seed, dtype); a killed run continues there and recomputes nothing. Timing is
redone on every invocation (cheap, and it must be one run).

Reproducible inputs: ``headline.json`` records the super-network's training command (its
``finetune.json``) and the search command (``run.json`` meta ``command`` where the search recorded it,
else ``--search-command``). Where ``--run`` is missing and ``--search-command`` is given (and
``--train-command`` where the super-network folder is missing too), they are run first; otherwise the
script stops with the recorded commands in the message.

Writes ``<results>/headline.json`` and ``headline.png`` (one panel per task) and rewrites the table between
the markers in ``benchmarks/README.md`` (with ``--results-dir``, a README.md in that folder).

    python benchmarks/headline.py --run /work/runs/sn-search/nsga2 --profile profiles/cloud-vm-2core-x86-avx2.yaml \\
        --tasks arc_easy,piqa,winogrande,hellaswag --points 5 --data-dir /work/shared/data

Goals (issues 9, 16), each reported as reached or not with the gap: on at least one task >= 1.5x fewer
non-embedding parameters and >= 1.3x decode speed-up at delta >= -1.0 pt (report part); the front ahead
of both baselines at every matched size on every task; GPTQ >= 6x smaller on disk than fp32 at <= 2 pt
drop (read from ``export.json``, ``benchmarks/export.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"
PARTIAL_VERSION = 1
SPLIT = "report"
WITHIN_PT = -1.0  # "within 1 pt": delta_pt >= this
GOAL_RATIO, GOAL_SPEEDUP = 1.5, 1.3
BASELINES = ("layer_drop", "uniform_mlp")
LABELS = {"parent": "parent (original)", "supernet_full": "super-network full", "nas": "NAS",
          "layer_drop": "layer drop", "uniform_mlp": "uniform MLP"}


def spread(rows: list, k: int) -> list:
    """Up to ``k`` rows evenly spaced over the list (sorted by size), always keeping both ends."""
    if len(rows) <= k:
        return rows
    if k == 1:
        return [rows[-1]]
    idx = sorted({round(i * (len(rows) - 1) / (k - 1)) for i in range(k)})
    return [rows[i] for i in idx]


# -- inputs: the run, the super-network, and the commands that regenerate them -------------------------
def _toolkit_argv(command: str) -> list[str]:
    """``command`` as argv; a leading ``toolkit`` is this interpreter's console script when not on PATH."""
    argv = shlex.split(command)
    if argv and argv[0] == "toolkit" and shutil.which("toolkit") is None:
        beside = Path(sys.executable).parent / "toolkit"
        if beside.is_file():
            argv[0] = str(beside)
    return argv


def run_command(command: str, what: str) -> None:
    from toolkit.errors import UserError

    print(f"headline: {what} missing, running: {command}", file=sys.stderr)
    rc = subprocess.run(_toolkit_argv(command), check=False).returncode
    if rc != 0:
        raise UserError(f"{what}: the regenerating command exited with {rc}: {command}")


def _model_present(source: str) -> bool:
    from toolkit.errors import UserError
    from toolkit.models.loading import resolve_source

    try:
        resolve_source(source)
    except UserError:
        return False
    return True


def _recorded(results_dir: Path) -> dict[str, str]:
    """The commands a previous headline.json recorded (for the message when an input is gone)."""
    try:
        prev = json.loads((results_dir / "headline.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: prev[k] for k in ("train_command", "search_command") if isinstance(prev.get(k), str)}


def ensure_inputs(args, results_dir: Path) -> dict[str, Any]:
    """The run's ``run.json`` record, after regenerating a missing run / super-network from the given
    commands; a missing input with no command to remake it is a one-line error that names the recorded one."""
    from toolkit.errors import UserError
    from toolkit.search import read_run_record

    run = Path(args.run)
    recorded = _recorded(results_dir)

    def missing(what: str, flag: str, key: str) -> UserError:
        hint = f"; the previous headline recorded: {flag} {shlex.quote(recorded[key])}" if key in recorded else ""
        return UserError(f"{what}: missing; pass {flag} 'COMMAND' to regenerate it{hint}")

    if not (run / "run.json").is_file():
        if not args.search_command:
            raise missing(f"{run} (search run)", "--search-command", "search_command")
        if args.train_command:
            out = _flag_value(shlex.split(args.train_command), "--out")
            if out is None or not (Path(out) / "finetune.json").is_file():
                run_command(args.train_command, f"{out or 'the super-network'} (super-network)")
        run_command(args.search_command, f"{run} (search run)")
        if not (run / "run.json").is_file():
            raise UserError(f"{run}: --search-command ran but left no run.json there (does its --out match --run?)")
    record = read_run_record(run)
    supernet = str(record["meta"].get("model", ""))
    if not _model_present(supernet):
        if not args.train_command:
            raise missing(f"{supernet} (the searched super-network, {run / 'run.json'} meta.model)", "--train-command",
                          "train_command")
        run_command(args.train_command, f"{supernet} (super-network)")
    return record


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# -- the per-(row, task) cache ---------------------------------------------------------------------------
class PartialCache:
    """``headline.partial.json``: one entry per (model hash, config, task, split, limit, seed, dtype), with
    each example's id, label and predictions, written atomically after every new entry."""

    def __init__(self, path: Path):
        from toolkit.errors import UserError

        self.path = path
        self.entries: dict[str, dict] = {}
        self.hits = 0
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise UserError(f"{path}: invalid JSON ({exc}); delete it to start over") from None
            if not isinstance(data, dict) or data.get("version") != PARTIAL_VERSION or not isinstance(data.get("entries"), dict):
                raise UserError(f"{path}: version: not a version-{PARTIAL_VERSION} headline cache; delete it to start over")
            self.entries = data["entries"]

    @staticmethod
    def key(model_hash: str, cfg_key: str, task: str, split: str, limit: int | None, seed: int, dtype: str) -> str:
        return json.dumps([model_hash, cfg_key, task, split, limit, seed, dtype])

    def get(self, key: str, expected_ids: list[str]):
        """The cached result, or None (also when the task's examples changed since it was written)."""
        e = self.entries.get(key)
        if e is None or [p[0] for p in e["per_example"]] != expected_ids:
            return None
        self.hits += 1
        return _result_from_entry(e)

    def put(self, key: str, result) -> None:
        from toolkit.fileio import atomic_write_json

        d = result.to_dict()
        d["per_example"] = [[r.id, r.label, r.pred, r.pred_norm, r.truncated] for r in result.per_example]
        self.entries[key] = d
        atomic_write_json(self.path, {"version": PARTIAL_VERSION, "entries": self.entries})


def _result_from_entry(e: dict):
    from toolkit.evaluate import ExampleResult, TaskResult

    names = {f.name for f in dataclasses.fields(TaskResult)} - {"per_example"}
    kw = {k: v for k, v in e.items() if k in names}
    kw["metrics"] = tuple(kw.get("metrics", ()))
    per = tuple(ExampleResult(i, label, (), pred, pred_norm, bool(cut)) for i, label, pred, pred_norm, cut in e["per_example"])
    return TaskResult(**kw, per_example=per)


# -- rows --------------------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str  # parent, supernet_full, nas_1, layer_drop_1, ...
    kind: str  # parent | supernet_full | nas | layer_drop | uniform_mlp
    size: int | None  # 1-based matched size for nas / baselines (1 = smallest)
    cfg: Any  # SubnetConfig
    params: int  # non-embedding
    source: str  # "parent" or "supernet": which model it is cut from
    search_accuracy: float | None = None  # the journal's search-part accuracy (informational only)


def main(argv: list[str] | None = None) -> int:
    from toolkit.errors import UserError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished search run directory (toolkit search --out)")
    ap.add_argument("--profile", required=True, help="the profile whose threads/workload time the rows")
    ap.add_argument("--parent", default=None,
                    help="the ORIGINAL model (default: the super-network folder's finetune.json 'model'; the searched "
                         "model itself when it is not a super-network)")
    ap.add_argument("--tasks", default="arc_easy,piqa,winogrande,hellaswag",
                    help="comma-separated task names or JSONL files, each evaluated on its report part")
    ap.add_argument("--report-limit", type=int, default=None,
                    help="a seeded cap on the examples taken from each report part (CPU time); default: the whole part")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --report-limit subset")
    ap.add_argument("--points", type=int, default=5, help="front members to compare (spread over sizes)")
    ap.add_argument("--max-fraction", type=float, default=0.9,
                    help="only front members below this share of the parent's non-embedding params")
    ap.add_argument("--export", default=str(_common.RESULTS / "export.json"), help="export benchmark result (GPTQ row)")
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats per row")
    ap.add_argument("--eval-threads", type=int, default=1, help="torch threads for the accuracy evaluations (not timing)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--results-dir", default=None, help="where headline.json/.png/.partial.json go (default benchmarks/results)")
    ap.add_argument("--readme", default=None, help="README whose headline markers get the table (default: "
                                                   "benchmarks/README.md, or <results-dir>/README.md with --results-dir)")
    ap.add_argument("--search-command", default=None, help="regenerates --run where it is missing (recorded)")
    ap.add_argument("--train-command", default=None, help="regenerates the super-network folder where it is missing (recorded)")
    args = ap.parse_args(argv)
    from toolkit.errors import UserError

    if args.report_limit is not None and args.report_limit < 1:
        raise UserError(f"--report-limit: must be positive, got {args.report_limit}")
    if args.points < 1:
        raise UserError(f"--points: must be at least 1, got {args.points}")
    if args.eval_threads < 1:
        raise UserError(f"--eval-threads: must be at least 1, got {args.eval_threads}")
    return args


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    results_dir = Path(args.results_dir) if args.results_dir else _common.RESULTS
    readme = Path(args.readme) if args.readme else (README if args.results_dir is None else results_dir / "README.md")
    command_line = "python benchmarks/headline.py " + " ".join(shlex.quote(a) for a in argv)

    import torch

    from toolkit.baselines import matched
    from toolkit.fileio import data_dir, default_calibration_file
    from toolkit.elastic import extract, parent_shape, model_space
    from toolkit.errors import UserError
    from toolkit.evaluate import evaluate_task
    from toolkit.importance import load_or_compute_importance
    from toolkit.calibrate.latency import subnet_measure_fn
    from toolkit.measure import torch_threads
    from toolkit.models import load_model
    from toolkit.profiles import load_profile, warn_if_foreign
    from toolkit.progress import progress_bar
    from toolkit.space import SubnetConfig
    from toolkit.stats import paired_from_results
    from toolkit.tasks import get_task, load_task

    record = ensure_inputs(args, results_dir)
    run = Path(args.run)
    meta = record["meta"]
    pareto = json.loads((run / "pareto.json").read_text())
    profile = load_profile(args.profile)
    warn_if_foreign(profile)
    eval_dtype = meta.get("eval_dtype") or profile.runtime.dtype
    data = data_dir(args.data_dir)
    task_names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not task_names:
        raise UserError("--tasks: no task given")
    tasks = {}
    for name in task_names:
        td = load_task(get_task(name), data)
        tasks[td.task.name] = td
    # The examples each row is graded on, and the search's, per task (ids; a pure function of the task).
    report_ids = {n: [e.id for e in td.split(SPLIT).select(args.report_limit, args.seed).examples] for n, td in tasks.items()}
    search_ids = {n: {e.id for e in td.split("search").examples} for n, td in tasks.items()}

    # The super-network (searched) and the original parent; each twice when the timing and grading dtypes differ.
    sn_timed = load_model(meta["model"], dtype=profile.runtime.dtype, device=profile.runtime.device)
    if sn_timed.model_hash != meta["model_hash"]:
        raise UserError(f"{run / 'run.json'}: meta.model_hash: the run searched {meta['model_hash']}, "
                        f"{meta['model']} is now {sn_timed.model_hash} (retrained? rerun the search)")
    sn_graded = sn_timed if eval_dtype == profile.runtime.dtype else load_model(meta["model"], dtype=eval_dtype)
    ft_path = Path(sn_timed.folder) / "finetune.json"
    finetune = json.loads(ft_path.read_text()) if ft_path.is_file() else None
    if args.parent:
        parent_source, parent_from = args.parent, "--parent"
    elif finetune is not None:
        if not finetune.get("model"):
            raise UserError(f"{ft_path}: model: missing; pass --parent (the original model)")
        parent_source, parent_from = str(finetune["model"]), f"{ft_path} model"
    else:
        parent_source, parent_from = meta["model"], "the searched model (not a super-network)"
    same_model = parent_source == meta["model"]
    p_timed = sn_timed if same_model else load_model(parent_source, dtype=profile.runtime.dtype, device=profile.runtime.device)
    p_graded = sn_graded if same_model else (
        p_timed if eval_dtype == profile.runtime.dtype else load_model(parent_source, dtype=eval_dtype))
    if finetune is not None and finetune.get("model_hash") and not same_model and finetune["model_hash"] != p_timed.model_hash:
        raise UserError(f"{ft_path}: model_hash: the super-network was trained from {finetune['model_hash']}, "
                        f"{parent_source} is {p_timed.model_hash}")
    shape = parent_shape(sn_timed.model)
    if parent_shape(p_timed.model) != shape:
        raise UserError(f"{parent_source}: not the shape of the super-network {meta['model']} (--parent must be the "
                        "original it was trained from)")
    same_model = same_model or p_timed.model_hash == sn_timed.model_hash

    imp = load_or_compute_importance(sn_timed, default_calibration_file(None, args.data_dir))
    space = model_space(sn_timed, imp)
    full = shape.full_config()
    parent_params = shape.num_params(full, include_embeddings=False)

    def nonemb(cfg: SubnetConfig) -> int:
        return shape.num_params(cfg, include_embeddings=False)

    rows = [Row("parent", "parent", None, full, parent_params, "parent")]
    if not same_model:
        rows.append(Row("supernet_full", "supernet_full", None, full, parent_params, "supernet"))
    # The front's search-part accuracies, kept only to show how optimistic they were (never compared).
    journal_acc = {SubnetConfig.from_dict(f["config"]).key(): f.get("metrics", {}).get("accuracy") for f in pareto["front"]}
    front = sorted((SubnetConfig.from_dict(f["config"]) for f in pareto["front"]), key=nonemb)
    front = [c for c in front if nonemb(c) <= args.max_fraction * parent_params]
    chosen = spread(front, args.points)
    for i, cfg in enumerate(chosen, 1):
        rows.append(Row(f"nas_{i}", "nas", i, cfg, nonemb(cfg), "supernet", journal_acc.get(cfg.key())))
        for method in BASELINES:
            b = matched(space, method, nonemb(cfg))
            rows.append(Row(f"{method}_{i}", method, i, b, nonemb(b), "supernet"))

    loaded = {"parent": (p_graded, None), "supernet": (sn_graded, imp)}
    results_dir.mkdir(parents=True, exist_ok=True)
    cache = PartialCache(results_dir / "headline.partial.json")
    results: dict[tuple[str, str], Any] = {}  # (row, task) -> TaskResult
    computed = 0
    with progress_bar() as bar, torch.inference_mode():
        t = bar.add_task("headline accuracy", total=len(rows) * len(tasks), info="")
        for row in rows:
            src, row_imp = loaded[row.source]
            for tname, td in tasks.items():
                key = cache.key(src.model_hash, row.cfg.key(), tname, SPLIT, args.report_limit, args.seed, eval_dtype)
                r = cache.get(key, report_ids[tname])
                if r is None:
                    bar.update(t, info=f"{row.name} on {tname}")
                    model = src.model if row.kind == "parent" else extract(src.model, row.cfg, row_imp)
                    with torch_threads(args.eval_threads):
                        r = evaluate_task(model, src.tokenizer, td, limit=args.report_limit, seed=args.seed,
                                          split=SPLIT, progress=False)
                    ids = [e.id for e in r.per_example]
                    if ids != report_ids[tname] or search_ids[tname] & set(ids):
                        raise RuntimeError(f"{row.name} on {tname}: evaluated examples are not the report part")
                    cache.put(key, r)
                    computed += 1
                results[(row.name, tname)] = r
                bar.advance(t)

    # Decode speed, all rows side by side in this run: the parent first and last (drift is recorded).
    measure = {"parent": subnet_measure_fn(p_timed, None, profile, args.repeats),
               "supernet": subnet_measure_fn(sn_timed, imp, profile, args.repeats)}
    speed: dict[str, dict] = {}
    with progress_bar() as bar, torch.inference_mode():
        t = bar.add_task("headline timing", total=len(rows) + 1, info="")
        for row in [*rows, rows[0]]:
            bar.update(t, info=row.name)
            m = measure[row.source](row.cfg)
            s = {"decode_tokens_per_s": 1e3 / m.decode_ms_per_token, "prefill_ms": m.prefill_ms,
                 "timing_flagged": bool(m.flagged)}
            if row.name in speed:  # the parent's second measurement
                speed["parent_end"] = s
            else:
                speed[row.name] = s
            bar.advance(t)
    parent_start = speed["parent"]["decode_tokens_per_s"]
    parent_tps = 0.5 * (parent_start + speed["parent_end"]["decode_tokens_per_s"])
    speed["parent"] = dict(speed["parent"], decode_tokens_per_s=parent_tps)  # the reference: the mean of the two

    # Per row and task: accuracy on the report part and the paired difference to the parent.
    out_rows = []
    for row in rows:
        tps = speed[row.name]["decode_tokens_per_s"]
        entry = {"name": row.name, "kind": row.kind, "size": row.size, "config_key": row.cfg.key(),
                 "config": row.cfg.to_dict(), "model": parent_source if row.source == "parent" else meta["model"],
                 "params": row.params, "params_ratio": parent_params / row.params,
                 **speed[row.name], "decode_speedup": tps / parent_tps, "search_part_accuracy": row.search_accuracy,
                 "tasks": {}}
        for tname in tasks:
            r = results[(row.name, tname)]
            cell = {"acc": r.acc, "acc_stderr": r.acc_stderr, "acc_norm": r.acc_norm, "report_examples": r.n,
                    "split": r.split}
            if row.kind != "parent":
                cell.update(_paired(paired_from_results(results[("parent", tname)], r)))
            if row.kind == "nas":
                for m in BASELINES:
                    cell[f"vs_{m}"] = _paired(paired_from_results(results[(f"{m}_{row.size}", tname)], r))
            entry["tasks"][tname] = cell
        out_rows.append(entry)

    best, reasons, goals = summarise(out_rows, list(tasks))
    gptq = _gptq(Path(args.export), shape)
    if gptq:
        goals.append({"goal": "GPTQ >= 6x smaller on disk than fp32 at <= 2 pt drop",
                      "reached": gptq["smaller_than_parent_fp32"] >= 6 and gptq["drop_pts"] <= 2,
                      "measured": f"{gptq['smaller_than_parent_fp32']:.2f}x smaller than the parent's fp32 weights, "
                                  f"{gptq['drop_pts']:+.1f} pt drop after quantization ({gptq['accuracy_n']} examples "
                                  "of export.json's own evaluation, not the report part)."})
    search_split = meta.get("split")
    # How optimistic the journal's accuracies were: the front's search-part accuracy minus its report-part
    # accuracy on the searched task (the selection bias the report part removes).
    gaps = [100 * (r["search_part_accuracy"] - r["tasks"][meta.get("task")]["acc"]) for r in out_rows
            if r["kind"] == "nas" and r["search_part_accuracy"] is not None and meta.get("task") in tasks]
    optimism = {"task": meta.get("task"), "rows": len(gaps), "mean_pt": sum(gaps) / len(gaps)} if gaps else None
    result = {
        "run": str(run), "supernet": {"model": meta["model"], "model_hash": meta["model_hash"]},
        "parent": {"model": parent_source, "model_hash": p_timed.model_hash, "from": parent_from, "params": parent_params},
        "train_command": (finetune or {}).get("command") or args.train_command,
        "train_sessions": (finetune or {}).get("sessions"),
        "search_command": meta.get("command") or args.search_command,
        "search_task": meta.get("task"), "search_split": search_split,
        "selection_disjoint": search_split == "search", "selection_optimism": optimism,
        "split": SPLIT, "report_limit": args.report_limit, "seed": args.seed, "eval_dtype": eval_dtype,
        "tasks": list(tasks), "report_examples": {n: len(ids) for n, ids in report_ids.items()},
        "profile": profile.name, "threads": profile.runtime.threads,
        "workload": {"prompt_tokens": profile.workload.prompt_tokens, "generate_tokens": profile.workload.generate_tokens},
        "parent_decode_tokens_per_s": {"start": parent_start,
                                       "end": speed["parent_end"]["decode_tokens_per_s"], "mean": parent_tps},
        "evaluations": {"computed": computed, "from_cache": cache.hits},
        "rows": out_rows, "best_within_1pt": best, "best_within_1pt_reason": reasons, "gptq": gptq, "goals": goals,
    }
    path = _common.write("headline", result, results_dir, command_line)
    text = table(result)
    write_readme(readme, text + f"\n\nRegenerate: `{command_line}`")
    plot(result, results_dir / "headline.png")
    print(text)
    print("->", path)
    return 0


def _paired(d) -> dict:
    """A :class:`toolkit.stats.PairedDifference` of accuracies as points."""
    return {"delta_pt": 100 * d.delta, "delta_ci95": [100 * d.ci_low, 100 * d.ci_high], "mcnemar_p": d.mcnemar_p,
            "paired_n": d.n, "method": d.method}


def summarise(rows: list[dict], tasks: list[str]) -> tuple[dict, dict, list[dict]]:
    """(best_within_1pt per task or None, the reason where None, the goals with what was measured)."""
    from toolkit.export.pareto import best_within

    nas = [r for r in rows if r["kind"] == "nas"]
    best, reasons, per_task_goal = {}, {}, []
    for t in tasks:
        # the most size reduction among rows within 1 pt (delta_pt is already the difference to the parent)
        b = best_within(nas, -WITHIN_PT, 0.0, accuracy=lambda r: r["tasks"][t]["delta_pt"],
                        rank=lambda r: r["params_ratio"])
        if b is None:
            best[t] = None
            reasons[t] = (f"no compared front member is within {-WITHIN_PT:g} pt of the parent on the report part"
                          if nas else "no front member was compared (none below --max-fraction)")
        else:
            c = b["tasks"][t]
            best[t] = {"task": t, "report_examples": c["report_examples"], "params_ratio": b["params_ratio"],
                       "decode_speedup": b["decode_speedup"], "delta_pt": c["delta_pt"], "delta_ci95": c["delta_ci95"],
                       "mcnemar_p": c["mcnemar_p"], "row": b["name"], "config_key": b["config_key"], "config": b["config"],
                       "params": b["params"]}
        per_task_goal.append((t, _goal_row(nas, t), _gap(nas, t, best[t])))
    reached = {t: g["name"] for t, g, _ in per_task_goal if g is not None}
    goals = [{"goal": f">= {GOAL_RATIO}x fewer non-embedding parameters and >= {GOAL_SPEEDUP}x decode speed-up at "
                      f">= {WITHIN_PT:+.1f} pt (report part) on at least one task",
              "reached": bool(reached), "reached_by": reached,
              "measured": " ".join(f"{t}: {gap}" for t, _, gap in per_task_goal)}]
    behind = []
    for t in tasks:
        for r in nas:
            c = r["tasks"][t]
            for m in BASELINES:
                if c[f"vs_{m}"]["delta_pt"] <= 0:
                    behind.append({"task": t, "size": r["size"], "baseline": m, "nas_minus_baseline_pt": c[f"vs_{m}"]["delta_pt"]})
    total = len(tasks) * len(nas)
    ahead = total - len({(b["task"], b["size"]) for b in behind})
    sig = sum(all(r["tasks"][t][f"vs_{m}"]["delta_ci95"][0] > 0 for m in BASELINES) for t in tasks for r in nas)
    goals.append({"goal": "the NAS front ahead of both pruning baselines at every matched size, on every task (report part)",
                  "reached": bool(nas) and not behind, "ahead": ahead, "of": total, "not_ahead": behind,
                  "measured": f"ahead of both at {ahead} of {total} (task, size) pairs, with the paired 95 % interval "
                              f"above 0 against both at {sig}"
                              + ("" if not behind else "; not ahead: " + ", ".join(
                                  f"{b['task']} #{b['size']} vs {LABELS[b['baseline']]} ({b['nas_minus_baseline_pt']:+.1f} pt)"
                                  for b in behind)) + "."})
    return best, reasons, goals


def _meets(r: dict, t: str) -> bool:
    return r["params_ratio"] >= GOAL_RATIO and r["decode_speedup"] >= GOAL_SPEEDUP and r["tasks"][t]["delta_pt"] >= WITHIN_PT


def _goal_row(nas: list[dict], t: str) -> dict | None:
    """The NAS row meeting the size, speed and accuracy goal on task ``t`` with the most size reduction."""
    return max((r for r in nas if _meets(r, t)), key=lambda r: r["params_ratio"], default=None)


def _gap(nas: list[dict], t: str, b: dict | None) -> str:
    """On task ``t``: the row that meets the goal, or what the goal misses by: the size / speed that the
    best within 1 pt (``b``, a ``best_within_1pt`` entry) lacks, and the points that the most accurate
    member small and fast enough lacks."""
    g = _goal_row(nas, t)
    if g is not None:
        return (f"reached by {g['name']} ({g['params_ratio']:.2f}x fewer params, {g['decode_speedup']:.2f}x decode, "
                f"{g['tasks'][t]['delta_pt']:+.1f} pt).")
    parts = []
    if b is not None:
        r, s = b["params_ratio"], b["decode_speedup"]
        parts.append(f"best within 1 pt is {b['row']} at {r:.2f}x fewer params and {s:.2f}x decode"
                     + (f" (needs {GOAL_RATIO / r:.2f}x more size reduction)" if r < GOAL_RATIO else "")
                     + (f" (needs {GOAL_SPEEDUP / s:.2f}x more speed)" if s < GOAL_SPEEDUP else ""))
    else:
        parts.append("no compared front member within 1 pt")
    big = [r for r in nas if r["params_ratio"] >= GOAL_RATIO and r["decode_speedup"] >= GOAL_SPEEDUP]
    if big:
        c = max(big, key=lambda r: r["tasks"][t]["delta_pt"])
        d = c["tasks"][t]["delta_pt"]
        parts.append(f"at >= {GOAL_RATIO}x and >= {GOAL_SPEEDUP}x the most accurate is {c['name']} "
                     f"({c['params_ratio']:.2f}x, {c['decode_speedup']:.2f}x) at {d:+.1f} pt: needs {WITHIN_PT - d:.1f} more pt")
    else:
        parts.append(f"no compared front member is both >= {GOAL_RATIO}x smaller and >= {GOAL_SPEEDUP}x faster")
    return "; ".join(parts) + "."


def _gptq(exp_path: Path, shape) -> dict | None:
    """GPTQ composition, from the export benchmark (its own run; sizes on disk do not depend on load)."""
    from toolkit.space import SubnetConfig

    if not exp_path.exists():
        return None
    exp = json.loads(exp_path.read_text())
    if "gptq" not in exp or not exp["gptq"].get("details"):
        return None
    d = exp["gptq"]["details"]
    fp32_parent = 4 * shape.num_params(shape.full_config())  # fp32 bytes of every weight, embeddings included
    sub = SubnetConfig.from_dict(exp["subnet"])
    fp32_subnet = 4 * shape.num_params(sub)
    before, after = exp["gptq"]["before"], exp["gptq"]["after"]
    return {"subnet": sub.key()[:12], "bits": d.get("bits"), "group_size": d.get("group_size"),
            "size_bytes": d["size_bytes"], "fp32_bytes": fp32_parent,
            "smaller_than_parent_fp32": fp32_parent / d["size_bytes"], "smaller_than_subnet_fp32": fp32_subnet / d["size_bytes"],
            "accuracy_before": before["task"]["acc"], "accuracy_after": after["task"]["acc"], "accuracy_n": before["task"]["n"],
            "perplexity_before": before["perplexity"]["value"], "perplexity_after": after["perplexity"]["value"],
            "drop_pts": 100 * (before["task"]["acc"] - after["task"]["acc"])}


# -- outputs ------------------------------------------------------------------------------------------------
def _label(r: dict) -> str:
    return LABELS[r["kind"]] + (f" #{r['size']}" if r["size"] else "")


def table(result: dict) -> str:
    p = result["parent"]
    rows = result["rows"]
    parent = rows[0]
    if result["selection_disjoint"]:
        disjoint = "disjoint from the search's part"
    else:
        disjoint = (f"NOTE: this run searched on split {result['search_split']!r}, so its selection may have seen "
                    "report examples")
    limit = result["report_limit"]
    part = "all of it" if limit is None else f"at most {limit} examples of it (seed {result['seed']})"
    wl = result["workload"]
    lines = [
        f"Report part of each task ({disjoint}), {part}; weights {result['eval_dtype']} for accuracy. Parent: the "
        f"original model `{p['model']}`; the others are cut from the super-network `{result['supernet']['model']}`. "
        f"Δ is paired (same examples) with a 95 % bootstrap interval. Decode speed on `{result['profile']}` "
        f"({result['threads']} threads, prompt {wl['prompt_tokens']}, {wl['generate_tokens']} new tokens), all rows "
        "in one run.",
    ]
    for t in result["tasks"]:
        pa = parent["tasks"][t]["acc"]
        lines += ["", f"**{t}** ({result['report_examples'][t]} examples):", "",
                  "| sub-network | non-emb. params | fewer params | accuracy | Δ acc (pt) [95 % CI] | McNemar p | decode tok/s | speed-up |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {_label(parent)} | {parent['params'] / 1e6:.1f} M | 1.00x | {pa:.3f} | 0.0 | | "
                  f"{parent['decode_tokens_per_s']:.1f} | {parent['decode_speedup']:.2f}x |"]
        for r in rows[1:]:
            c = r["tasks"][t]
            lo, hi = c["delta_ci95"]
            lines.append(f"| {_label(r)} | {r['params'] / 1e6:.1f} M | {r['params_ratio']:.2f}x | {c['acc']:.3f} | "
                         f"{c['delta_pt']:+.1f} [{lo:+.1f}, {hi:+.1f}] | {c['mcnemar_p']:.2g} | "
                         f"{r['decode_tokens_per_s']:.1f} | {r['decode_speedup']:.2f}x |")
        b = result["best_within_1pt"][t]
        lines += ["", (f"Best within 1 pt on {t}: {_label(next(r for r in rows if r['name'] == b['row']))}, "
                       f"{b['params_ratio']:.2f}x fewer params, {b['decode_speedup']:.2f}x decode, {b['delta_pt']:+.1f} pt "
                       f"[{b['delta_ci95'][0]:+.1f}, {b['delta_ci95'][1]:+.1f}].") if b else
                  f"Best within 1 pt on {t}: none ({result['best_within_1pt_reason'][t]})."]
    o = result.get("selection_optimism")
    if o:
        lines += ["", f"Selection optimism: on `{o['task']}` the {o['rows']} compared front members scored {o['mean_pt']:+.1f} pt "
                      "(mean) higher on the search's examples than on the report part."]
    g = result.get("gptq")
    if g:
        lines += ["", f"GPTQ {g['bits']}-bit (group {g['group_size']}) on `{g['subnet']}` (from export.json): "
                      f"{g['size_bytes'] / 1e6:.1f} MB on disk vs {g['fp32_bytes'] / 1e6:.1f} MB fp32 of the parent "
                      f"({g['smaller_than_parent_fp32']:.2f}x smaller), {g['smaller_than_subnet_fp32']:.2f}x vs the sub-network's "
                      f"own fp32 folder; accuracy {g['accuracy_before']:.3f} -> {g['accuracy_after']:.3f} on {g['accuracy_n']} examples."]
    if result.get("gguf"):
        lines += ["", gguf_table(result)]
    lines += ["", "Goals:", ""]
    for goal in result["goals"]:
        lines.append(f"* {'reached' if goal['reached'] else 'NOT reached'}: {goal['goal']}. {goal['measured']}")
    return "\n".join(lines)


def gguf_table(result: dict) -> str:
    """The llama.cpp rows (``benchmarks/headline_gguf.py``): sizes, accuracy in llama.cpp, decode speed."""
    g = result["gguf"]
    tasks = list(g["rows"][0]["tasks"])
    origin = ("the headline's super-network" if g["is_the_headline_supernetwork"] else
              f"`{g['model']}` (model {g['model_hash']}, NOT the headline's super-network, which was not kept)")
    lines = [f"GGUF for llama.cpp of the best row within 1 pt (`{g['config_key'][:12]}`, {g['from_row']}), cut from "
             f"{origin}; sizes on disk against the parent's {g['parent_fp32_bytes'] / 1e6:.0f} MB of fp32 weights; "
             f"accuracy on the same report-part examples, scored in llama.cpp, Δ paired against the fp32 sub-network; "
             f"decode on `{g['profile']}` ({g['threads']} threads).", "",
             "| weights | MB on disk | smaller than parent fp32 | " + " | ".join(f"{t} acc (Δ pt [95 % CI])" for t in tasks)
             + " | decode tok/s |", "|---|---:|---:|" + "---:|" * len(tasks) + "---:|"]
    for r in g["rows"]:
        cells = []
        for t in tasks:
            c = r["tasks"][t]
            cells.append(f"{c['acc']:.3f}" if "delta_pt" not in c else
                         f"{c['acc']:.3f} ({c['delta_pt']:+.1f} [{c['delta_ci95'][0]:+.1f}, {c['delta_ci95'][1]:+.1f}])")
        name = "fp32 (PyTorch)" if r["type"] == "fp32" else f"GGUF {r['type']} (llama.cpp)"
        lines.append(f"| {name} | {r['bytes'] / 1e6:.1f} | {r['smaller_than_parent_fp32']:.2f}x | " + " | ".join(cells)
                     + f" | {r['decode_tokens_per_s']:.1f} ({r['engine']}) |")
    return "\n".join(lines)


def write_readme(readme: Path, text: str) -> None:
    from toolkit.fileio import atomic_write_text

    old = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in old:
        old += f"\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(readme, f"{head}{BEGIN}\n{text}\n{END}{tail}")


def plot(result: dict, path: Path) -> None:
    """One panel per task: report accuracy vs non-embedding parameters; error bars are the paired 95 %
    interval of each row's difference to the parent, drawn around the row's accuracy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        return
    tasks = result["tasks"]
    rows = result["rows"]
    parent = rows[0]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4.2), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for kind, marker, style in (("nas", "o", "-"), ("layer_drop", "s", "--"), ("uniform_mlp", "^", "--")):
            rs = [r for r in rows if r["kind"] == kind]
            if not rs:
                continue
            xs = [r["params"] / 1e6 for r in rs]
            ys = [r["tasks"][t]["acc"] for r in rs]
            err = [[r["tasks"][t]["delta_pt"] / 100 - r["tasks"][t]["delta_ci95"][0] / 100 for r in rs],
                   [r["tasks"][t]["delta_ci95"][1] / 100 - r["tasks"][t]["delta_pt"] / 100 for r in rs]]
            ax.errorbar(xs, ys, yerr=err, marker=marker, linestyle=style, capsize=3, label=LABELS[kind])
        sn = next((r for r in rows if r["kind"] == "supernet_full"), None)
        if sn:
            ax.scatter([sn["params"] / 1e6], [sn["tasks"][t]["acc"]], marker="D", color="grey", label=LABELS["supernet_full"], zorder=4)
        pa = parent["tasks"][t]["acc"]
        ax.scatter([parent["params"] / 1e6], [pa], marker="*", s=160, color="k", label=LABELS["parent"], zorder=5)
        ax.axhline(pa + WITHIN_PT / 100, color="k", alpha=0.3, linewidth=0.8, linestyle=":")
        ax.set_xlabel("non-embedding parameters (M)")
        ax.set_ylabel(f"accuracy ({result['report_examples'][t]} report examples)")
        ax.set_title(t)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Searched sub-networks vs pruning at matched size (error bars: paired 95 % CI of Δ to the parent)", fontsize=10)
    fig.tight_layout()
    from toolkit.report import save_png

    save_png(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
