"""Super-network training methods compared at one CPU budget (issue 16): global, local, local+global.

Each method trains a super-network of the same parent on the same text (``<data-dir>/calibration/c4_sample.jsonl``,
never evaluation data) for the same budget of training CPU time (``toolkit finetune --max-cpu-minutes``:
process CPU, all threads, monitor evaluations excluded; the fair unit on a shared 2-core machine, where wall
time depends on what else runs). Then the full network and five fixed sub-network sizes (50-90 % of the
parent's non-embedding parameters, inside the trained space) are cut from each super-network and from the
untrained original (``toolkit.elastic.extract``) and evaluated alike: WikiText-2 test perplexity on a fixed
token budget and arc_easy accuracy on a seeded subset of its *report* part (never the search part). The
curve is each method's held-out C4 perplexity of the monitored sub-networks against training CPU minutes
(from ``finetune.json``).

One command regenerates everything: a missing super-network folder is trained with the recorded command
(``--resume`` where a run was cut short), and every evaluation is kept in
``results/supernet.partial.<method>.json`` as soon as it exists, so a killed run continues.

    python benchmarks/supernet.py --work /work/sn --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402

RESULTS = HERE / "results"
METHODS = ("global", "local", "local+global")


def train_args(method: str, budget: float) -> list[str]:
    """The finetune settings of each method, chosen so that each schedule ends near ``budget`` CPU minutes on
    SmolLM2 at one thread (``--max-cpu-minutes budget`` caps it). Chosen from step times estimated before the
    run (a global step 8.3 s, a local step 0.4 s per layer); measured in the run of 2026-12-02 on the AVX-512
    host: a global step 6.2 s in bf16, so the global schedules ended below the cap (the CPU minutes each
    method really used are in supernet.json, ``train_cpu_minutes``)."""
    per_min = budget / 25.0
    if method == "global":
        return ["--method", "global", "--steps", str(round(180 * per_min)), "--eval-every", "20", "--checkpoint-every", "10"]
    if method == "local":
        return ["--method", "local", "--local-steps", str(round(115 * per_min)), "--local-windows", "64"]
    return ["--method", "local+global", "--local-steps", str(round(55 * per_min)), "--local-windows", "64",
            "--steps", str(round(92 * per_min)), "--eval-every", "20", "--checkpoint-every", "10"]


def train_command(method: str, args) -> list[str]:
    return ["toolkit", "finetune", "--model", args.model, "--out", str(Path(args.work) / method), "--data-dir", args.data_dir,
            *train_args(method, args.budget_cpu_minutes), "--max-cpu-minutes", str(args.budget_cpu_minutes), "--seed", str(args.seed)]


def ensure_trained(method: str, args) -> None:
    """Train ``method``'s super-network unless its folder is complete; resume one that was cut short."""
    out = Path(args.work) / method
    if (out / "finetune.json").is_file() and not (out / "local_cache").exists():
        why = json.loads((out / "finetune.json").read_text()).get("stopped_early")
        if why is None or str(why).startswith("CPU budget"):  # finished its schedule or its budget
            return
    cmd = train_command(method, args)
    if (out / "checkpoint" / "state.json").is_file() or (out / "local_cache").is_dir():
        cmd.append("--resume")
    elif out.exists():
        cmd.append("--overwrite")
    print("training:", " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    toolkit = Path(sys.executable).with_name("toolkit")
    rc = subprocess.run([str(toolkit) if toolkit.exists() else cmd[0], *cmd[1:]], env=env).returncode
    if rc:
        raise SystemExit(f"error: training {method} failed with exit code {rc}; rerun this script to resume it")


def sizes(shape, layer_order):
    """The full network and five fixed uniform sub-networks (50-90 % of non-embedding parameters)."""
    from toolkit.space import SubnetConfig

    L, H = shape.num_layers, shape.num_heads

    def cfg(depth, mlp, heads):
        return SubnetConfig(tuple(sorted(layer_order[:depth])), (mlp,) * depth, (heads,) * depth)

    F = shape.intermediate_size
    return {
        "full": cfg(L, F, H),
        "mlp83": cfg(L, round(F * 5 / 6 / 64) * 64, H),  # SmolLM2: MLP 1280
        "depth90_mlp83": cfg(round(L * 0.9), round(F * 5 / 6 / 64) * 64, H),  # 27 layers
        "mlp67_heads67": cfg(L, round(F * 2 / 3 / 64) * 64, H - shape.group_size),  # MLP 1024, 6 heads
        "mlp50": cfg(L, round(F / 2 / 64) * 64, H),  # MLP 768
        "mlp33": cfg(L, round(F / 3 / 64) * 64, H),  # MLP 512
    }


def evaluate(model, tokenizer, args) -> dict:
    import torch

    from toolkit.evaluate import evaluate_task, perplexity

    with torch.inference_mode():
        # stride = window - 1: each window after the first re-reads one token, so the first token it scores has context.
        ppl = perplexity(model, tokenizer, str(Path(args.data_dir) / "wikitext2" / "test.txt"), window=args.window,
                         stride=args.window - 1, max_tokens=args.ppl_tokens)
        arc = evaluate_task(model, tokenizer, "arc_easy", limit=args.arc_limit, seed=0, split="report",
                            data_dir=args.data_dir, progress=False)
    return {"wikitext2_ppl": ppl.perplexity, "ppl_tokens_scored": ppl.tokens_scored, "arc_easy_acc": arc.acc,
            "arc_easy_acc_stderr": arc.acc_stderr, "arc_easy_n": arc.n, "arc_easy_split": arc.split,
            "arc_easy_correct": [int(r.pred == r.label) for r in arc.per_example],
            "arc_easy_ids": [r.id for r in arc.per_example], "eval_seconds": round(ppl.seconds + arc.seconds, 1)}


def evaluate_side(side: str, args) -> dict:
    """Evaluate every size cut from one side (``original`` or a method's super-network), resumably."""
    from toolkit.fileio import default_calibration_file
    from toolkit.elastic import extract, parent_shape
    from toolkit.fileio import atomic_write_json
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.progress import progress_bar

    settings = {"ppl_tokens": args.ppl_tokens, "window": args.window, "arc_limit": args.arc_limit, "dtype": args.dtype}
    path = Path(args.results_dir) / f"supernet.partial.{side.replace('+', '_')}.json"
    partial = json.loads(path.read_text()) if path.is_file() else {}
    folder = args.model if side == "original" else str(Path(args.work) / side)
    loaded = load_model(folder, dtype=args.dtype)
    if partial.get("settings") != settings or partial.get("model_hash") != loaded.model_hash:
        partial = {"settings": settings, "model_hash": loaded.model_hash, "rows": {}}
    imp = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
    configs = sizes(parent_shape(loaded.model), imp.layer_order())
    todo = [n for n in configs if n not in partial["rows"]]
    with progress_bar() as bar:
        t = bar.add_task(f"evaluate {side}", total=len(configs), completed=len(configs) - len(todo), info="")
        for name in todo:
            child = loaded.model.eval() if name == "full" else extract(loaded.model, configs[name], imp)
            res = evaluate(child, loaded.tokenizer, args)
            res["config"] = configs[name].to_dict()
            partial["rows"][name] = res
            atomic_write_json(path, partial)
            bar.advance(t)
            bar.update(t, info=f"{name}: ppl {res['wikitext2_ppl']:.1f}, arc {res['arc_easy_acc']:.3f}")
            del child
    return partial


def curve(info: dict) -> list[dict]:
    """(training CPU minutes, phase, held-out perplexity of each monitored sub-network) from finetune.json."""
    out = []
    for e in info.get("val_ppl_curve", []):
        cpu = e.get("train_cpu_seconds")
        if cpu is None:  # a run from before CPU accounting
            continue
        out.append({"cpu_minutes": round(cpu / 60, 2), "step": e["step"], "phase": e.get("phase", "global"),
                    "val_ppl": e["val_ppl"], "geomean_ppl": math.exp(sum(math.log(v) for v in e["val_ppl"].values()) / len(e["val_ppl"]))})
    return out


def training_record(method: str, args) -> dict:
    info = json.loads((Path(args.work) / method / "finetune.json").read_text())
    steps_cpu = [c for c in info.get("step_cpu_seconds") or [] if c is not None]
    local = info.get("local") or {}
    rec = {"method": method, "command": info.get("command"), "sessions": info.get("sessions"),
           "config": info["config"], "global_steps": info["steps_done"], "stopped_early": info.get("stopped_early"),
           "global_tokens": info["steps_done"] * info["train_tokens_per_step"],
           "global_cpu_minutes": round(sum(steps_cpu) / 60, 2),
           "global_tokens_per_cpu_hour": info.get("tokens_per_cpu_hour"),
           "local_cpu_minutes": round(local["cpu_seconds"] / 60, 2) if local else 0.0,
           "local_tokens_per_layer": local.get("tokens_per_layer"),
           "local_tokens_per_cpu_hour": local.get("tokens_per_cpu_hour"),
           "curve": curve(info)}
    rec["train_cpu_minutes"] = round(rec["global_cpu_minutes"] + rec["local_cpu_minutes"], 2)
    # Tokens that went through the whole trunk per CPU hour: a local token passes every block once (each in its
    # own job), a global token passes the teacher and three sub-networks forward and backward.
    tokens = rec["global_tokens"] + (local.get("tokens_per_layer") or 0)
    rec["tokens_per_cpu_hour"] = round(tokens / (rec["train_cpu_minutes"] / 60), 1) if rec["train_cpu_minutes"] else None
    return rec


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    colors = {"original": "tab:gray", "global": "tab:blue", "local": "tab:orange", "local+global": "tab:green"}
    ax = axes[0]
    for m in result["methods"]:
        c = m["training"]["curve"]
        mid = [k for k in c[0]["val_ppl"] if k.startswith("mlp")] if c else []
        ax.plot([p["cpu_minutes"] for p in c], [p["val_ppl"][mid[0]] if mid else p["geomean_ppl"] for p in c],
                marker="o", label=m["method"], color=colors.get(m["method"]))
    ax.set_xlabel("training CPU minutes")
    ax.set_ylabel("held-out C4 perplexity, mid-width monitor sub-network")
    ax.set_title(f"training curve (cap {result['budget_cpu_minutes']} CPU-min each)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    for ax, key, label, log in ((axes[1], "wikitext2_ppl", "WikiText-2 perplexity (log)", True),
                                (axes[2], "arc_easy_acc", "arc_easy accuracy (report part)", False)):
        sides = [("original", result["original"])] + [(m["method"], m["sizes"]) for m in result["methods"]]
        for name, rows in sides:
            xs = [r["non_embedding_fraction"] for r in rows]
            ax.plot(xs, [r[key] for r in rows], marker="s" if name == "original" else "o", linestyle="--" if name == "original" else "-",
                    label=f"cut from {name}", color=colors.get(name))
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("non-embedding parameters (fraction of the parent)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    from toolkit.report import save_png

    save_png(fig, path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/work/sn", help="folder of the super-networks, one sub-folder per method")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budget-cpu-minutes", type=float, default=25.0, help="training CPU budget of each method")
    p.add_argument("--model", default="smollm2-135m", help="the original parent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ppl-tokens", type=int, default=8192, help="WikiText-2 token budget (first N tokens)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--arc-limit", type=int, default=400, help="seeded subset of arc_easy's report part")
    p.add_argument("--dtype", default="auto", help="evaluation weights dtype, alike for every side (auto: bfloat16 where the CPU has native bf16)")
    p.add_argument("--only", default=None, help="train and evaluate one side (original or a method) and stop: run two at once")
    p.add_argument("--results-dir", default=str(RESULTS))
    args = p.parse_args(argv)
    from toolkit.fileio import data_dir

    args.data_dir = str(data_dir(args.data_dir))
    if args.dtype == "auto":
        from toolkit.profiles import detect

        args.dtype = "bfloat16" if detect("cpu").features.bf16 else "float32"
    if not args.budget_cpu_minutes > 0:
        p.error("--budget-cpu-minutes: must be positive")
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r} (known: {', '.join(METHODS)})")
    if args.only:
        if args.only != "original":
            ensure_trained(args.only, args)
        evaluate_side(args.only, args)
        return 0
    for m in methods:
        ensure_trained(m, args)
    from toolkit.elastic import parent_shape
    from toolkit.models import load_model
    from toolkit.space import SubnetConfig
    from toolkit.stats import paired_difference

    shape = parent_shape(load_model(args.model).model)
    full = shape.num_params(shape.full_config(), include_embeddings=False)
    t0 = time.perf_counter()
    original = evaluate_side("original", args)["rows"]

    def rows_of(partial_rows: dict, ref: dict | None) -> list[dict]:
        out = []
        for name, r in partial_rows.items():
            n = shape.num_params(SubnetConfig.from_dict(r["config"]), include_embeddings=False)
            row = {"name": name, "non_embedding_fraction": round(n / full, 4), "non_embedding_params": n,
                   **{k: v for k, v in r.items() if k not in ("arc_easy_correct", "arc_easy_ids")}}
            if ref is not None:
                o = ref[name]
                assert o["arc_easy_ids"] == r["arc_easy_ids"]
                d = paired_difference(o["arc_easy_correct"], r["arc_easy_correct"], seed=0)
                row["arc_easy_vs_original_cut"] = {"delta_pt": 100 * d.delta, "ci95_pt": [100 * d.ci_low, 100 * d.ci_high]}
                row["ppl_ratio_vs_original_cut"] = r["wikitext2_ppl"] / o["wikitext2_ppl"]
            out.append(row)
        return sorted(out, key=lambda r: -r["non_embedding_fraction"])

    results = []
    for m in methods:
        rows = evaluate_side(m, args)["rows"]
        sized = rows_of(rows, original)
        cuts = [r for r in sized if r["name"] != "full"]
        results.append({"method": m, "training": training_record(m, args), "sizes": sized,
                        "geomean_ppl_5_sizes": math.exp(sum(math.log(r["wikitext2_ppl"]) for r in cuts) / len(cuts)),
                        "mean_arc_easy_acc_5_sizes": sum(r["arc_easy_acc"] for r in cuts) / len(cuts)})
    best = min(results, key=lambda r: r["geomean_ppl_5_sizes"])
    result = {
        "budget_cpu_minutes": args.budget_cpu_minutes, "model": args.model, "seed": args.seed,
        "settings": {"ppl_tokens": args.ppl_tokens, "window": args.window, "stride": args.window - 1,
                     "arc_limit": args.arc_limit, "arc_split": "report", "dtype": args.dtype},
        "train_commands": {m: " ".join(shlex.quote(c) for c in train_command(m, args)) for m in methods},
        "original": rows_of(original, None),
        "methods": results,
        "best_method": best["method"],
        "best_by": "lowest geometric-mean WikiText-2 perplexity over the five cut sizes",
        "eval_wall_seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    path = _common.write("supernet", result, Path(args.results_dir))
    plot(result, path.with_suffix(".png"))
    print(f"{'':14s} " + " ".join(f"{r['name']:>14s}" for r in result["original"]))
    for name, rows in [("original", result["original"])] + [(r["method"], r["sizes"]) for r in results]:
        print(f"{name:14s} " + " ".join(f"{r['wikitext2_ppl']:7.1f}/{r['arc_easy_acc']:.3f}" for r in rows))
    print(f"best: {best['method']} -> {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
