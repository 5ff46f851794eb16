"""NSGA-II vs random search at the same budget and seed, on the real model (issue 7).

Runs ``toolkit search`` twice (nsga2, random) into ``--work``, then measures (not predicts) the decode
speed of every front member and of the parent on this machine, and names the fastest front member
within 1 point of the parent's accuracy. Both searches are resumable: re-running the script continues
them. Writes benchmarks/results/search.json and search.png. On a 2-core machine, start the two searches
yourself first, one per core (``toolkit search ... --algorithm nsga2|random --out WORK/nsga2|random``
with the same arguments); the script then finds them finished and only measures the front.

    python benchmarks/search.py --model /work/supernet-smollm2 --profile profiles/cloud-vm-2core-x86.yaml \\
        --predictor runs/predictor.json --task arc_easy --limit 200 --evals 100 --population 20 --work runs/bench-search
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--predictor", required=True)
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--evals", type=int, default=100)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench-search")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--eval-dtype", default=None, help="passed to toolkit search (accuracy evaluation dtype)")
    ap.add_argument("--eval-threads", type=int, default=1, help="passed to toolkit search")
    ap.add_argument("--name", default="search", help="results file stem (benchmarks/results/NAME.json/.png)")
    args = ap.parse_args()

    from toolkit.cli.main import main as toolkit
    from toolkit.search import load_evaluations, pareto_front

    work = Path(args.work)
    common = ["--model", args.model, "--profile", args.profile, "--predictor", args.predictor, "--task", args.task,
              "--limit", str(args.limit), "--evals", str(args.evals), "--population", str(args.population),
              "--seed", str(args.seed), "--eval-threads", str(args.eval_threads), "--resume"]
    common += (["--data-dir", args.data_dir] if args.data_dir else []) + (["--eval-dtype", args.eval_dtype] if args.eval_dtype else [])
    runs = {}
    for algo in ("nsga2", "random"):
        rc = toolkit(["search", *common, "--algorithm", algo, "--out", str(work / algo)])
        if rc:
            raise SystemExit(f"search {algo} failed with exit code {rc}")
        runs[algo] = json.loads((work / algo / "pareto.json").read_text())

    # Measure the front members' real decode speed.
    from toolkit.fileio import default_calibration_file
    from toolkit.elastic import model_space
    from toolkit.importance import load_or_compute_importance
    from toolkit.calibrate.latency import subnet_measure_fn
    from toolkit.models import load_model
    from toolkit.profiles import load_profile
    from toolkit.space import SubnetConfig

    profile = load_profile(args.profile)
    loaded = load_model(args.model, dtype=profile.runtime.dtype, device=profile.runtime.device)
    imp = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
    space = model_space(loaded, imp)
    measure = subnet_measure_fn(loaded, imp, profile, args.repeats)
    nsga = runs["nsga2"]
    parent_eval = nsga["parent"]
    parent_m = measure(space.largest())
    parent_tps = 1e3 / parent_m.decode_ms_per_token
    front = []
    for f in nsga["front"]:
        cfg = SubnetConfig.from_dict(f["config"])
        m = measure(cfg)
        row = {"key": f["key"], "config": f["config"], "accuracy": f["metrics"]["accuracy"],
               "accuracy_stderr": f["metrics"].get("accuracy_stderr"), "params": f["metrics"]["params"],
               "predicted_decode_tokens_per_s": f["metrics"]["decode_tokens_per_s"],
               "measured_decode_tokens_per_s": 1e3 / m.decode_ms_per_token,
               "measured_decode_speedup": (1e3 / m.decode_ms_per_token) / parent_tps,
               "measured_prefill_ms": m.prefill_ms}
        front.append(row)
        print(f"front: acc {row['accuracy']:.3f}  measured {row['measured_decode_tokens_per_s']:.1f} tok/s "
              f"({row['measured_decode_speedup']:.2f}x)", flush=True)
    parent_acc = parent_eval["metrics"]["accuracy"] if parent_eval else None
    from toolkit.export.pareto import best_within

    # the fastest member within 1 point, by measured (not predicted) decode speed
    best = (best_within(front, 0.01, parent_acc, accuracy=lambda r: r["accuracy"],
                        rank=lambda r: r["measured_decode_tokens_per_s"]) if parent_acc is not None else None)
    hv = {a: runs[a]["hypervolume"] for a in runs}
    # NSGA-II stops at a generation boundary (it may overshoot the budget by < one population); compare
    # both at the same number of evaluations too: each run's first n evaluations, in journal order.
    from toolkit.search import hypervolume

    ev = {a: load_evaluations(work / a) for a in runs}
    n_equal = min(len(v) for v in ev.values())
    ref = {o: next(e for e in ev["nsga2"] if e.key == space.largest().key()).metrics[o]
           for o in ("accuracy", "decode_tokens_per_s")}
    hv_equal = {a: hypervolume(ev[a][:n_equal], ["accuracy", "decode_tokens_per_s"], ref) for a in runs}
    out = _common.write(args.name, {
        "model": args.model, "profile": profile.name, "task": args.task, "limit": args.limit, "seed": args.seed,
        "evals": {a: runs[a]["evaluations"] for a in runs}, "population": args.population,
        "evaluation_minutes": {a: round(sum(e.seconds for e in load_evaluations(work / a)) / 60, 1) for a in runs},
        "eval_dtype": args.eval_dtype,
        "hypervolume": hv, "hypervolume_ratio_nsga2_over_random": hv["nsga2"] / hv["random"] if hv["random"] else None,
        "equal_budget": {"evaluations": n_equal, "hypervolume": hv_equal,
                         "ratio_nsga2_over_random": hv_equal["nsga2"] / hv_equal["random"] if hv_equal["random"] else None},
        "goal_hypervolume_ratio": 1.2,
        "parent": {"accuracy": parent_acc, "measured_decode_tokens_per_s": parent_tps,
                   "measured_prefill_ms": parent_m.prefill_ms},
        "front": front,
        "fastest_within_1pt": best,
        "random_front_size": len(runs["random"]["front"]),
    })
    # The plot: both searches' evaluations and fronts.
    from toolkit.report import plot_pareto
    from toolkit.search import axis_labels

    ev_n = load_evaluations(work / "nsga2")
    ev_r = load_evaluations(work / "random")
    fr_r = pareto_front(ev_r, ["accuracy", "decode_tokens_per_s"])
    plot_pareto(_common.RESULTS / f"{args.name}.png", ev_n, pareto_front(ev_n, ["accuracy", "decode_tokens_per_s"]),
                ["accuracy", "decode_tokens_per_s"], labels=axis_labels(["accuracy", "decode_tokens_per_s"]),
                parent=next((e for e in ev_n if e.key == space.largest().key()), None),
                baselines={"random search front": [(e.metrics["decode_tokens_per_s"], e.metrics["accuracy"]) for e in
                                                   sorted(fr_r, key=lambda e: e.metrics["decode_tokens_per_s"])]},
                title=f"NSGA-II vs random search ({args.task}, {args.evals} evaluations)")
    print(f"HV nsga2 {hv['nsga2']:.4f} vs random {hv['random']:.4f}; fastest within 1 pt: "
          f"{best['measured_decode_speedup']:.2f}x" if best else "no front member within 1 pt", "->", out)


if __name__ == "__main__":
    main()
