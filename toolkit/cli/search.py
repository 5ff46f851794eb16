"""``toolkit search``: NSGA-II over sub-networks for a device (stage 3 of 4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolkit.cli.common import add_data_dir_arg, add_model_arg, default_calibration_file

EXAMPLES = """examples:
  toolkit search --model smollm2-135m --profile run/profile.yaml --predictor run/predictor.json \\
      --task arc_easy --limit 200 --evals 100 --population 20 --seed 0 --out run/search
  toolkit search ... --out run/search --resume          # continue a killed search
  toolkit search ... --algorithm random --out run/random  # the baseline at the same budget
"""


def register(sub) -> None:
    p = sub.add_parser("search", help="stage 3: find Pareto-optimal sub-networks for a device", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    p.add_argument("--profile", required=True, help="device profile (name in profiles/ or a YAML file)")
    p.add_argument("--predictor", required=True, help="predictor JSON from `toolkit calibrate`")
    p.add_argument("--task", default="arc_easy", help="task name (see `toolkit eval --list`) or a JSONL file")
    p.add_argument("--limit", type=int, default=200, help="examples per evaluation (a seeded fixed subset); 0 = all")
    p.add_argument("--evals", type=int, default=100, help="distinct sub-networks to evaluate")
    p.add_argument("--population", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--algorithm", choices=("nsga2", "random"), default="nsga2")
    p.add_argument("--objectives", default="accuracy,decode_tokens_per_s",
                   help="comma-separated; accuracy plus any of decode_tokens_per_s, prefill_ms, params, peak_mem_bytes")
    p.add_argument("--min-accuracy", type=float, default=None)
    p.add_argument("--max-params", type=float, default=None)
    p.add_argument("--calibration", default=None, help="calibration text for importance")
    p.add_argument("--eval-threads", type=int, default=1,
                   help="torch threads for the accuracy evaluations (not timing; default 1: on a shared 2-core "
                        "machine one thread measured 5x faster than two)")
    p.add_argument("--out", required=True, help="run directory (journal, pareto.json, pareto.png)")
    p.add_argument("--eval-dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="weights dtype for the accuracy evaluations (default: the profile's dtype). bfloat16 "
                        "evaluates ~2x faster on CPUs with AVX512-BF16/AMX; speeds still come from the predictor")
    p.add_argument("--resume", action="store_true", help="continue the search journaled in --out")
    add_data_dir_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from toolkit.elastic import extract, space_for
    from toolkit.evaluate import evaluate_task
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.predictor import Predictor
    from toolkit.errors import UserError
    from toolkit.profiles import load_profile
    from toolkit.search import Searcher, SearchSettings
    from toolkit.cli.common import data_dir
    from toolkit.tasks import get_task, load_task

    profile = load_profile(args.profile)  # search times nothing itself: speeds come from the predictor
    predictor = Predictor.load(args.predictor)
    if predictor.profile_fingerprint != profile.fingerprint:
        raise UserError(f"{args.predictor}: profile.fingerprint: calibrated for {predictor.profile_name!r}, "
                        f"not for the profile {profile.name!r} being searched for")
    task_data = load_task(get_task(args.task), data_dir(args.data_dir))  # read once, reused per candidate
    loaded = load_model(args.model, dtype=args.eval_dtype or profile.runtime.dtype, device=profile.runtime.device)
    predictor.check_model(loaded.model_hash, where=args.predictor)
    importance = load_or_compute_importance(loaded, default_calibration_file(args.calibration, args.data_dir))
    space = space_for(loaded, importance)
    settings = SearchSettings(
        objectives=tuple(o.strip() for o in args.objectives.split(",") if o.strip()),
        algorithm=args.algorithm, evals=args.evals, population=args.population, seed=args.seed,
        memory_budget_bytes=float(profile.memory.usable_bytes), min_accuracy=args.min_accuracy, max_params=args.max_params,
    )
    limit = args.limit or None

    from toolkit.measure import torch_threads

    def accuracy(cfg):
        child = extract(loaded.model, cfg, importance)
        with torch_threads(args.eval_threads):
            r = evaluate_task(child, loaded.tokenizer, task_data, limit=limit, seed=args.seed, progress=False)
        return {"accuracy": r.acc, "accuracy_stderr": r.acc_stderr, "acc_norm": r.acc_norm}

    from toolkit.profiles import find_profile

    meta = {"model": args.model, "model_hash": loaded.model_hash, "profile": profile.name,
            "profile_file": str(find_profile(args.profile).resolve()), "task": task_data.task.name,
            "limit": limit, "predictor": str(Path(args.predictor).resolve()),
            "eval_dtype": args.eval_dtype or profile.runtime.dtype}
    from toolkit.progress import enabled, progress_bar

    with progress_bar() as bar:
        t = bar.add_task(f"search ({args.algorithm})", total=args.evals, info="")

        def on_progress(state):
            bar.update(t, completed=min(state["evaluations"], args.evals),
                       info=f"gen {state['generation']}  front {state['front']}  best acc {state['best_accuracy']:.3f}")

        searcher = Searcher(space, settings, accuracy, predictor.predict, args.out, meta=meta, resume=args.resume,
                            on_progress=on_progress)
        result = searcher.run()
    summary = {"run": args.out, "evaluations": len(result.evaluations), "new_evaluations": searcher.new_evaluations,
               "front": len(result.front), "hypervolume": round(result.hypervolume, 6)}
    print(json.dumps(summary))
    if not enabled():
        return 0
    from toolkit.cli.report import print_front

    print_front(Path(args.out))
    return 0
