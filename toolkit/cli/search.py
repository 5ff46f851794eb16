"""``toolkit search``: NSGA-II over sub-networks for a device (stage 3 of 4)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolkit.cli.common import add_data_dir_arg, add_model_arg, emit
from toolkit.fileio import default_calibration_file

EXAMPLES = """examples:
  toolkit search --model smollm2-135m --profile run/profile.yaml --predictor run/predictor.json \\
      --task arc_easy --limit 200 --evals 100 --population 20 --seed 0 --out run/search
  toolkit search ... --out run/search --resume          # continue a killed search
  toolkit search ... --out run/search --json            # the summary as one JSON object on stdout (no front table):
      {"run": "run/search", "evaluations": 100, "new_evaluations": 100, "feasible": 97, "front": 6,
       "hypervolume": 0.41, "executor": "local", ..., "retries": 0}
  toolkit search ... --algorithm random --out run/random  # the baseline at the same budget
  toolkit eval --model smollm2-135m --subnet SUBNET.json --task arc_easy --split report
                                                         # a front member on the half the search never saw
  toolkit search ... --executor ray --workers 2 --worker-threads 1 --out run/search
                                                         # a generation graded by 2 Ray workers at once
  toolkit search ... --executor ray --ray-address auto --workers 8 --worker-gpus 1
                                                         # on the cluster started with `ray start --head`

A task the parent scores at chance on (within two standard errors of uniform guessing on the search
subset) cannot rank sub-networks: the search refuses to start, naming the task (--allow-chance to go on).

exit codes: 0 a front was found; 2 bad input (one line on stderr, before the model loads), or the parent
at chance on the task (one line, once the parent is graded); 3 the search
ran but no candidate was feasible (all over the constraints, or all failed): pareto.json has
"feasible_count": 0 and an empty front, and stderr says why in one line
"""
EXIT_NOTHING_FEASIBLE = 3

# SearchSettings field -> the flag it comes from (errors name what the user typed)
_FLAGS = {"evals": "--evals", "population": "--population", "seed": "--seed", "objectives": "--objectives",
          "min_accuracy": "--min-accuracy", "max_params": "--max-params", "algorithm": "--algorithm"}


def register(sub) -> None:
    p = sub.add_parser("search", help="stage 3: find Pareto-optimal sub-networks for a device", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    p.add_argument("--profile", required=True, help="device profile (name in profiles/ or a YAML file)")
    p.add_argument("--predictor", required=True, help="predictor JSON from `toolkit calibrate`")
    p.add_argument("--task", default="arc_easy",
                   help="task name (see `toolkit eval --list`), a .jsonl file in the common schema, or an lm-eval task .yaml")
    p.add_argument("--metric", choices=("acc", "acc_norm", "mc2"), default=None,
                   help="the accuracy objective (default: the task's first lm-eval metric; mc2 for rows with several "
                        "true answers)")
    p.add_argument("--allow-chance", action="store_true",
                   help="search even when the parent scores within two standard errors of chance on the search "
                        "subset (such a task cannot rank sub-networks; by default the search refuses to start)")
    p.add_argument("--limit", type=int, default=200,  # the same words as eval's --limit
                   help="a seeded fixed subset of N examples of the --split part; 0 = all of them (default: %(default)s)")
    p.add_argument("--split", choices=("search", "all"), default="search",
                   help="the task's part candidates are graded on (default: 'search', the half that "
                        "`toolkit eval --split report` never shares, so reported numbers are free of the search's "
                        "selection); 'all' only to resume or repeat runs made before the split existed")
    p.add_argument("--evals", type=int, default=100, help="distinct sub-networks to evaluate")
    p.add_argument("--population", type=int, default=50, help="NSGA-II population: candidates per generation (default 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search: the same seed gives the same search (default 0)")
    p.add_argument("--algorithm", choices=("nsga2", "random"), default="nsga2",
                   help="nsga2 (default) or random sampling of the space (a baseline)")
    p.add_argument("--objectives", default="accuracy,decode_tokens_per_s",
                   help="comma-separated: accuracy first, then any of decode_tokens_per_s, prefill_ms, params, peak_mem_bytes")
    p.add_argument("--min-accuracy", type=float, default=None,
                   help="constraint: candidates below this accuracy (0-1) are infeasible")
    p.add_argument("--max-params", type=float, default=None,
                   help="constraint: candidates with more parameters than this (e.g. 1e8) are infeasible")
    p.add_argument("--calibration", default=None, help="calibration text for importance")
    p.add_argument("--eval-threads", type=int, default=1,
                   help="torch threads for the accuracy evaluations (not timing; default 1: a tiny-batch forward "
                        "pass of a small model gains little from more threads, and on a machine with few cores "
                        "extra threads compete with each other)")
    p.add_argument("--out", required=True, help="run directory (journal, pareto.json, pareto.png)")
    p.add_argument("--eval-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="weights dtype for the accuracy evaluations (default: the profile's dtype). bfloat16 "
                        "evaluates ~2x faster on CPUs with AVX512-BF16/AMX; speeds still come from the predictor")
    p.add_argument("--resume", action="store_true", help="continue the search journaled in --out")
    add_data_dir_arg(p)
    from toolkit.search.executors import add_executor_args

    add_executor_args(p, default_threads_help="--eval-threads")
    p.set_defaults(func=run)


def _settings(args, profile):
    from toolkit.errors import ConfigError, UserError
    from toolkit.profiles import find_profile
    from toolkit.search import SearchSettings

    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    if objectives and objectives[0] != "accuracy" and "accuracy" in objectives:
        # the front is ordered by it and `export --pick N` counts from its best (runs made before this rule
        # with another order still resume and report)
        raise UserError(f"--objectives: accuracy must come first, got {args.objectives}")
    try:
        return SearchSettings(
            objectives=objectives,
            algorithm=args.algorithm, evals=args.evals, population=args.population, seed=args.seed,
            memory_budget_bytes=float(profile.memory.usable_bytes), min_accuracy=args.min_accuracy,
            max_params=args.max_params,
        )
    except ConfigError as exc:
        if exc.field == "memory_budget_bytes":
            raise ConfigError("memory.usable_bytes", exc.problem, str(find_profile(args.profile))) from None
        raise UserError(f"{_FLAGS.get(exc.field, exc.field)}: {exc.problem}") from None


def _check_run_dir(args, settings) -> dict | None:
    """--out before anything loads: a run there needs --resume, and a resumed run.json must be readable
    and have been searched with these settings (the rest of it is compared once the model is known).
    The run record being resumed, read once here; None for a new run."""
    from toolkit.errors import UserError
    from toolkit.search import check_same_split, read_run_record

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out: exists and is not a directory")
    if not (out / "run.json").exists():
        return None
    if not args.resume:
        raise UserError(f"{out}: a search already lives here; pass --resume to continue it or choose another --out")
    record = read_run_record(out)
    if record["settings"] != settings.to_dict():
        raise UserError(f"{out / 'run.json'}: settings: differs from this invocation; resume with the original arguments")
    check_same_split(out / "run.json", record.get("meta", {}), args.split)
    return record


def _nothing_feasible(result, settings) -> str:
    """The one stderr line of a search whose every candidate is infeasible (or failed)."""
    n = len(result.evaluations)
    errors = [e for e in result.evaluations if e.error]
    if len(errors) == n:
        return f"search: all {n} evaluations failed, nothing is feasible (first error: {errors[0].error})"
    limits = []
    if settings.memory_budget_bytes is not None:
        limits.append(f"predicted peak memory <= {settings.memory_budget_bytes / 2**30:.3g} GiB (the profile's usable memory)")
    if settings.max_params is not None:
        limits.append(f"params <= {settings.max_params:g}")
    if settings.min_accuracy is not None:
        limits.append(f"accuracy >= {settings.min_accuracy:g}")
    failed = f", {len(errors)} failed" if errors else ""
    return (f"search: no feasible sub-network: all {n} candidates break the constraints ({'; '.join(limits)}){failed}; "
            "the front in pareto.json is empty")


def _metric(args, subset, resumed: dict | None) -> str:
    """The accuracy objective: --metric, or the task's first lm-eval metric; warns once when rows carry
    several true answers that it ignores."""
    from toolkit.errors import UserError
    from toolkit.tasks import labels_warning

    task = subset.task
    metric = args.metric or task.metrics[0]
    if metric == "mc2" and not all(e.golds for e in subset.examples):
        missing = next(e for e in subset.examples if not e.golds)
        raise UserError(f"--metric mc2: {missing.where(subset.file)}: the row has no labels (mc2 scores several true "
                        "answers per row, given as labels: one 0/1 per choice)")
    if resumed is not None:  # before the model loads: the journal's accuracies are of one metric
        was = resumed["meta"].get("metric", "acc")
        if was != metric:
            raise UserError(f"{Path(args.out) / 'run.json'}: meta.metric: was {was!r}, now {metric!r}; resume with --metric {was}")
    warning = labels_warning(subset, [metric])
    if warning:
        print(warning, file=sys.stderr)
    return metric


def _chance_guard(args, graded, space, subset, metric, resumed: dict | None):
    """(the guard's record for run.json, the parent's metrics when measured here).

    The parent is graded on the search subset first; within two standard errors of chance (the expected
    ``metric`` of uniform guessing) the task cannot tell sub-networks apart, and the search refuses to
    start unless --allow-chance. A resumed run reuses the record its first start wrote (of the same
    metric: :func:`_metric` refused another)."""
    from toolkit.errors import UserError
    from toolkit.tasks.metrics import at_chance

    old = resumed["meta"].get("chance_guard") if resumed is not None else None
    parent_metrics = None
    if old:
        guard = old
    else:
        parent_metrics = graded(space.largest())
        chance = subset.chance(metric)
        guard = {"metric": metric, "chance": chance, "parent": parent_metrics["accuracy"],
                 "parent_stderr": parent_metrics["accuracy_stderr"], "n": len(subset),
                 "at_chance": at_chance(parent_metrics["accuracy"], parent_metrics["accuracy_stderr"], chance)}
    if guard["at_chance"] and not args.allow_chance:
        raise UserError(
            f"--task {subset.task.name}: the parent's {metric} on the search subset is {guard['parent']:.4f} ± "
            f"{guard['parent_stderr']:.4f} (n={guard['n']}), within two standard errors of chance ({guard['chance']:.4f}): "
            "the task cannot rank sub-networks; choose a task the model does better than guessing on, a larger "
            "--limit, or pass --allow-chance")
    return guard, parent_metrics


def run(args) -> int:
    import sys

    from toolkit.search import require_search_extra

    require_search_extra()  # pymoo and matplotlib: a missing extra is found before any work, not after it
    from toolkit.elastic import model_space
    from toolkit.evaluate import check_task_lengths, model_max_length, peek_tokenizer, truncation_warning
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.calibrate import Predictor
    from toolkit.errors import UserError
    from toolkit.profiles import load_profile
    from toolkit.search import Searcher, axis_labels
    from toolkit.fileio import data_dir
    from toolkit.tasks import get_task, load_task

    # Every argument is checked before the model loads and before anything is written.
    if args.limit < 0:
        raise UserError(f"--limit: must be 0 (all examples) or positive, got {args.limit}")
    if args.eval_threads < 1:
        raise UserError(f"--eval-threads: must be at least 1, got {args.eval_threads}")
    from toolkit.search.executors import RayExecutor, model_reference, spec_from_args

    spec = spec_from_args(args, default_threads=args.eval_threads)
    profile = load_profile(args.profile)  # search times nothing itself: speeds come from the predictor
    settings = _settings(args, profile)
    predictor = Predictor.load(args.predictor)
    if predictor.profile_fingerprint != profile.fingerprint:
        raise UserError(f"{args.predictor}: profile.fingerprint: calibrated for {predictor.profile_name!r}, "
                        f"not for the profile {profile.name!r} being searched for")
    # The speed objective is the profile's engine's speed: a predictor timed in another engine is not it.
    predictor.check_engine(profile, where=args.predictor)
    resumed = _check_run_dir(args, settings)
    executor = None
    if spec.parallel:  # Ray missing or the cluster unreachable: one line, before the model loads
        executor = RayExecutor(None, spec)
        executor.connect()
    # Read once, reused per candidate; only the search part (never the report part) is graded on.
    root = data_dir(args.data_dir)
    task_data = load_task(get_task(args.task, root), root).split(args.split)
    limit = args.limit or None
    subset = task_data.select(limit, args.seed)  # the examples every candidate is graded on
    metric = _metric(args, subset, resumed)

    def check_lengths(tokenizer, max_length):
        cut = check_task_lengths(subset, tokenizer, max_length)
        if cut:
            print(truncation_warning(task_data.task.name, cut, len(subset), max_length), file=sys.stderr)

    peeked = peek_tokenizer(args.model)
    if peeked is not None:
        check_lengths(*peeked[:2])
    loaded = load_model(args.model, dtype=args.eval_dtype or profile.runtime.dtype, device=profile.runtime.device)
    if peeked is None:
        check_lengths(loaded.tokenizer, model_max_length(loaded.model))
    predictor.check_model(loaded.model_hash, where=args.predictor)
    importance = load_or_compute_importance(loaded, default_calibration_file(args.calibration, args.data_dir))
    space = model_space(loaded, importance)
    from toolkit.search.workers import AccuracyWorker, accuracy_fn

    accuracy = None
    graded = accuracy_fn(loaded, importance, task_data, limit, args.seed, args.eval_threads, metric)
    guard, parent_metrics = _chance_guard(args, graded, space, subset, metric, resumed)
    # The guard measured the parent already: the search (local or on Ray workers) uses that, not a regrade.
    known = {space.largest().key(): parent_metrics} if parent_metrics else None
    if executor is None:
        accuracy = graded
    else:  # each worker loads the model once; the examples and the importance ordering travel with it
        executor.factory = AccuracyWorker(model_reference(args.model), loaded.model_hash, args.eval_dtype or profile.runtime.dtype,
                                          profile.runtime.device, importance, task_data, limit, args.seed,
                                          spec.worker_threads, spec.worker_gpus, metric)

    from toolkit.profiles import find_profile

    meta = {"model": args.model, "model_hash": loaded.model_hash, "profile": profile.name,
            "profile_file": str(find_profile(args.profile).resolve()), "task": task_data.task.name,
            "limit": limit, "split": args.split, "predictor": str(Path(args.predictor).resolve()),
            "eval_dtype": args.eval_dtype or profile.runtime.dtype, "metric": metric, "chance_guard": guard}
    from toolkit.progress import progress_bar

    try:
        if executor is not None:
            with progress_bar() as bar:
                bar.add_task(f"start {spec.workers} Ray worker(s) (each loads the model)", total=None, info="")
                executor.start()
        with progress_bar() as bar:
            t = bar.add_task(f"search ({args.algorithm})", total=args.evals, info="")

            def on_progress(state):
                bar.update(t, completed=min(state["evaluations"], args.evals),
                           info=f"generation {state['generation']}  front {state['front']}  best acc {state['best_accuracy']:.3f}")

            searcher = Searcher(space, settings, accuracy, predictor.predict, args.out, meta=meta, resume=args.resume,
                                on_progress=on_progress, executor=executor, known=known)
            result = searcher.run()
    finally:
        if executor is not None:
            executor.close()
    from toolkit.report import write_run_report

    write_run_report(args.out, result.evaluations, result.front, settings.objectives, result.parent,
                     labels=axis_labels(settings.objectives))
    feasible = sum(e.feasible for e in result.evaluations)
    summary = {"run": args.out, "evaluations": len(result.evaluations), "new_evaluations": searcher.new_evaluations,
               "feasible": feasible, "front": len(result.front), "hypervolume": round(result.hypervolume, 6),
               **spec.describe(), "retries": searcher.retries}
    emit(args, summary, title="toolkit search")
    if searcher.retries:
        print(f"search: {searcher.retries} evaluation(s) re-queued after their worker died (each journaled once)",
              file=sys.stderr)
    if not args.json:  # people also get the front (--json: the summary is the one document on stdout)
        from toolkit.cli.report import print_run_front

        print_run_front(Path(args.out))
    if not feasible:
        print(_nothing_feasible(result, settings), file=sys.stderr)
        return EXIT_NOTHING_FEASIBLE
    return 0
