"""Scaling of the search's candidate evaluations on Ray workers: real SmolLM2 and a stub, one run.

Two parts, on one local Ray cluster (``ray.init(num_cpus=N)``), side by side:

1. **SmolLM2-135M**: the same search (same seed, task part, subset, budget) with 1 and then 2 Ray workers
   of 1 torch thread each. Reported: candidate evaluations per hour of each, ``speedup_2_workers``, and
   whether the two journals (every record but its wall-clock seconds) and fronts are identical. Worker
   start-up (each loads the model once) is timed apart and excluded from the rates.
2. **Stub evaluator**: each candidate sleeps a fixed time (no CPU), on 1, 8 and 32 actors reserving no
   CPU, through the real Searcher (pymoo, predictor, journal fsyncs) and executor. Reported:
   ``driver_overhead_ms`` = (wall - evaluations x sleep) / evaluations with 1 actor (what the driver and
   Ray add to each evaluation), and ``efficiency_K`` = achieved / ideal throughput (ideal: K / sleep
   evaluations per second).

Nothing else should run on the machine meanwhile (part 1 is a timing). Writes
``benchmarks/results/scale.json`` and ``scale.png``::

    python benchmarks/scale.py                    # the recorded run (defaults below)
    python benchmarks/scale.py --skip-model --actors 1,8 --stub-evals 32   # the stub part only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


@dataclass(frozen=True)
class SleepWorker:
    """The stub: every candidate takes ``seconds`` of wall time and no CPU; its accuracy is a fixed
    function of its size (so the search has something to optimise)."""

    seconds: float
    full_params: float

    def __call__(self):
        import toolkit.space  # noqa: F401  - what the jobs carry (SubnetConfig): a ready worker has it loaded

        shape_params = self.full_params

        def evaluate(cfg):
            time.sleep(self.seconds)
            frac = (sum(cfg.mlp) + 64 * sum(cfg.heads)) / max(1.0, shape_params)
            return {"accuracy": 0.25 + 0.5 * min(1.0, frac) ** 0.5, "accuracy_stderr": 0.01}

        return evaluate


def _comparable(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def model_part(args, work: Path) -> dict:
    """Part 1: the SmolLM2 search with 1 and 2 workers."""
    from toolkit.fileio import data_dir, default_calibration_file
    from toolkit.elastic import parent_shape, model_space
    from toolkit.search.executors import ExecutorSpec, RayExecutor
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.calibrate import Hardware, Predictor
    from toolkit.profiles import load_profile
    from toolkit.search import Searcher, SearchSettings
    from toolkit.search.workers import AccuracyWorker
    from toolkit.tasks import get_task, load_task

    profile = load_profile(args.profile)
    dtype = args.eval_dtype or profile.runtime.dtype
    loaded = load_model(args.model, dtype=dtype)
    importance = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
    space = model_space(loaded, importance)
    root = data_dir(args.data_dir)
    task = load_task(get_task(args.task, root), root).split("search")
    predictor = Predictor.prior(loaded.model_hash, profile.name, profile.fingerprint, parent_shape(loaded.model),
                                Hardware.from_profile(profile), profile.workload)
    factory = AccuracyWorker(args.model, loaded.model_hash, dtype, "cpu", importance, task, args.limit, args.seed, 1)
    settings = SearchSettings(evals=args.evals, population=args.population, seed=args.seed)
    del loaded
    out: dict = {"model": args.model, "task": args.task, "split": "search", "limit": args.limit, "evals": args.evals,
                 "population": args.population, "seed": args.seed, "eval_dtype": dtype, "worker_threads": 1, "runs": {}}
    fronts, journals = {}, {}
    # Rounds alternate 1, 2, 1, 2, ... workers, so a slow spell of this shared VM hits both alike; every
    # run is a fresh search (its own run folder) with the same seed.
    for rnd in range(args.rounds):
        for workers in (1, 2):
            run = work / f"smollm2-{workers}-{rnd}"
            with RayExecutor(factory, ExecutorSpec(kind="ray", workers=workers, worker_threads=1)) as pool:
                searcher = Searcher(space, settings, None, predictor.predict, run, executor=pool)
                t0 = time.perf_counter()
                result = searcher.run()
                wall = time.perf_counter() - t0
                startup = pool.startup_seconds
            n = searcher.new_evaluations
            fronts[(workers, rnd)] = [e.key for e in result.front]
            journals[(workers, rnd)] = _comparable(run)
            busy = sum(e.seconds for e in result.evaluations)  # worker time per candidate, as journaled
            out["runs"].setdefault(str(workers), []).append({
                "round": rnd, "workers": workers, "evaluations": n, "wall_s": round(wall, 2),
                "startup_s": round(startup, 2), "evals_per_hour": round(n / wall * 3600, 1),
                "mean_eval_s": round(busy / n, 3),
                # the workers' share of the wall time spent evaluating (the rest: waiting at generation
                # ends for the slowest candidate, and the driver)
                "worker_busy_fraction": round(busy / (workers * wall), 4), "retries": searcher.retries})
            print(f"smollm2 round {rnd}, {workers} worker(s): {n} evaluations in {wall:.1f} s ({n / wall * 3600:.0f}/h; "
                  f"start-up {startup:.1f} s)", flush=True)
    for w in ("1", "2"):
        runs = out["runs"][w]
        n, wall = sum(r["evaluations"] for r in runs), sum(r["wall_s"] for r in runs)
        out[f"evals_per_hour_{w}_worker{'s' if w == '2' else ''}"] = round(n / wall * 3600, 1)
        out[f"mean_eval_s_{w}"] = round(sum(r["mean_eval_s"] * r["evaluations"] for r in runs) / n, 3)
    out["speedup_2_workers"] = round(out["evals_per_hour_2_workers"] / out["evals_per_hour_1_worker"], 3)
    out["speedup_2_workers_per_round"] = [round(b["evals_per_hour"] / a["evals_per_hour"], 3)
                                          for a, b in zip(out["runs"]["1"], out["runs"]["2"])]
    # how much slower one evaluation runs beside another (two workers share the caches and memory bus)
    out["eval_slowdown_2_workers"] = round(out["mean_eval_s_2"] / out["mean_eval_s_1"], 3)
    out["front"] = fronts[(1, 0)]
    out["identical_fronts"] = len({tuple(f) for f in fronts.values()}) == 1
    out["identical_journals"] = all(j == journals[(1, 0)] for j in journals.values())
    return out


def stub_part(args, work: Path) -> dict:
    """Part 2: the stub evaluator on 1, 8, 32 actors."""
    from toolkit.search.executors import ExecutorSpec, RayExecutor
    from toolkit.calibrate import Hardware, Predictor, Workload
    from toolkit.search import Searcher, SearchSettings
    from toolkit.space import ParentShape, SearchSpace

    shape = ParentShape(num_layers=30, hidden_size=576, intermediate_size=1536, num_heads=9, num_kv_heads=3,
                        head_dim=64, vocab_size=49152, tie_word_embeddings=True)  # SmolLM2-135M's geometry
    space = SearchSpace.from_parent(shape)
    predictor = Predictor.prior("stub", "stub", "stub", shape, Hardware(1e11, 1e10), Workload(128, 32, 1))
    factory = SleepWorker(args.sleep, float(sum(shape.full_config().mlp) + 64 * sum(shape.full_config().heads)))
    settings = SearchSettings(evals=args.stub_evals, population=args.stub_population, seed=args.seed)
    out: dict = {"sleep_s": args.sleep, "evals": args.stub_evals, "population": args.stub_population, "runs": {}}
    fronts = {}
    for k in args.actors:
        with RayExecutor(factory, ExecutorSpec(kind="ray", workers=k), num_cpus=0) as pool:
            searcher = Searcher(space, settings, None, predictor.predict, work / f"stub-{k}", executor=pool)
            t0 = time.perf_counter()
            result = searcher.run()
            wall = time.perf_counter() - t0
            startup = pool.startup_seconds
        n = searcher.new_evaluations
        fronts[k] = [e.key for e in result.front]
        achieved, ideal = n / wall, k / args.sleep
        out["runs"][str(k)] = {"actors": k, "evaluations": n, "wall_s": round(wall, 3), "startup_s": round(startup, 2),
                               "evals_per_s": round(achieved, 3), "ideal_evals_per_s": round(ideal, 3),
                               "efficiency": round(achieved / ideal, 4),
                               "overhead_ms_per_eval": round((wall - n * args.sleep / k) / n * 1e3, 2)}
        print(f"stub, {k} actor(s): {n} evaluations in {wall:.2f} s, efficiency {achieved / ideal:.3f}", flush=True)
    one = out["runs"].get("1")
    if one is not None:
        out["driver_overhead_ms"] = round((one["wall_s"] - one["evaluations"] * args.sleep) / one["evaluations"] * 1e3, 2)
    for k in args.actors:
        out[f"efficiency_{k}"] = out["runs"][str(k)]["efficiency"]
    out["identical_fronts"] = len({tuple(f) for f in fronts.values()}) == 1
    return out


def plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("smollm2", "stub") if p in result]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4.2), squeeze=False)
    for ax, part in zip(axes[0], parts):
        r = result[part]
        if part == "smollm2":
            ws = ["1", "2"]
            rates = [r["evals_per_hour_1_worker"], r["evals_per_hour_2_workers"]]
            ax.bar([f"{w} worker{'s' if w != '1' else ''}" for w in ws], rates, color=["#888", "#2a7"])
            ax.axhline(rates[0] * 2, ls="--", color="k", lw=0.8, label="2x one worker")
            ax.set_ylabel("candidate evaluations / hour")
            ax.set_title(f"SmolLM2-135M, {r['task']} ({r['limit']} ex.), 1 thread each\n"
                         f"speed-up {r['speedup_2_workers']:.2f}x ({len(r['runs']['1'])} alternating rounds)\n"
                         f"fronts identical: {r['identical_fronts']}", fontsize=10)
            ax.legend()
        else:
            ks = sorted(r["runs"], key=int)
            x = [int(k) for k in ks]
            ax.plot(x, [r["runs"][k]["evals_per_s"] for k in ks], "o-", label="achieved")
            ax.plot(x, [r["runs"][k]["ideal_evals_per_s"] for k in ks], "k--", label="ideal (actors / sleep)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log", base=2)
            ax.set_xlabel("Ray actors")
            ax.set_ylabel("evaluations / s")
            eff = ", ".join(f"{k}: {r['runs'][k]['efficiency']:.2f}" for k in ks)
            ax.set_title(f"stub evaluator ({r['sleep_s']} s sleep each)\nefficiency {eff}\n"
                         f"driver overhead {r.get('driver_overhead_ms', float('nan')):.1f} ms/eval (1 actor)", fontsize=10)
            ax.legend()
    m = result.get("machine_fingerprint", "")
    fig.suptitle(f"toolkit search --executor ray on {m}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--profile", default="cloud-vm-2core-x86", help="its dtype grades the candidates (unless --eval-dtype)")
    ap.add_argument("--eval-dtype", default=None)
    ap.add_argument("--task", default="arc_easy")
    ap.add_argument("--limit", type=int, default=50, help="examples per candidate (of the task's search part)")
    ap.add_argument("--evals", type=int, default=32)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="SmolLM2 part: alternating 1- and 2-worker runs")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--skip-model", action="store_true", help="only the stub part")
    ap.add_argument("--sleep", type=float, default=2.0, help="stub: seconds per candidate")
    ap.add_argument("--actors", default="1,8,32", help="stub: comma-separated actor counts")
    ap.add_argument("--stub-evals", type=int, default=96)
    ap.add_argument("--stub-population", type=int, default=32)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: this machine's)")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--replot", action="store_true", help="only redraw scale.png from the results JSON")
    args = ap.parse_args(argv)
    if args.replot:
        results_dir = Path(args.results_dir) if args.results_dir else _common.RESULTS
        plot(results_dir / "scale.png", json.loads((results_dir / "scale.json").read_text()))
        return 0
    args.actors = [int(a) for a in args.actors.split(",") if a.strip()]

    import logging
    import os

    import ray
    import ray.cloudpickle

    # One-off imports of a driver (pymoo, matplotlib for pareto.png) are paid once per search, whatever its
    # length; imported here so the timed runs measure what each evaluation costs.
    import matplotlib.pyplot  # noqa: F401
    import pymoo.algorithms.moo.nsga2  # noqa: F401

    ray.cloudpickle.register_pickle_by_value(sys.modules[SleepWorker.__module__])  # the stub travels by value
    from toolkit.search.executors import PRIVATE_CLUSTER_CONFIG

    # the cluster `toolkit search --executor ray` starts on one machine (no --ray-address)
    ray.init(num_cpus=args.num_cpus or os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
             _system_config=PRIVATE_CLUSTER_CONFIG)
    from toolkit.profiles import fingerprint_current_machine

    result: dict = {"ray": ray.__version__, "cluster_cpus": ray.cluster_resources().get("CPU"),
                    "machine_fingerprint": fingerprint_current_machine()}
    try:
        with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
            work = Path(tmp)
            if not args.skip_model:
                result["smollm2"] = model_part(args, work)
            result["stub"] = stub_part(args, work)
    finally:
        ray.shutdown()
    crit = {}
    if "smollm2" in result:
        s = result["smollm2"]
        crit["speedup_2_workers >= 1.8"] = s["speedup_2_workers"] >= 1.8
        crit["identical fronts (1 vs 2 workers)"] = bool(s["identical_fronts"] and s["identical_journals"])
    st = result["stub"]
    if "driver_overhead_ms" in st:
        crit["driver_overhead_ms <= 50"] = st["driver_overhead_ms"] <= 50
    if "efficiency_32" in st:
        crit["efficiency_32 >= 0.9"] = st["efficiency_32"] >= 0.9
    result["criteria"] = crit
    results_dir = Path(args.results_dir) if args.results_dir else _common.RESULTS
    path = _common.write("scale", result, results_dir,
                         command_line=None if argv is None else " ".join(["python", "benchmarks/scale.py", *argv]))
    plot(results_dir / "scale.png", result)
    print(json.dumps({"out": str(path), **crit}))
    return 0 if all(crit.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
