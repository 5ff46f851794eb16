"""The headline table (issue 9): the searched front vs pruning baselines at matched size, and GPTQ on top.

For a finished search run it takes up to ``--points`` front members spread over their sizes and, for each,
the two pruning baselines with the closest non-embedding parameter count (:mod:`toolkit.baselines`:
ShortGPT-style layer dropping, uniform MLP-width pruning with the same activation-aware importance). All
of them, and the parent, are evaluated on the search's task with the search's example subset (same
``limit`` and ``seed``, same evaluation dtype), and their decode speed is measured side by side in this
one run with the profile's threads and workload (a ratio measured in one run, not across runs). GPTQ
composition is read from ``benchmarks/results/export.json`` (``benchmarks/export.py``), which quantizes
one front member and records its size on disk and accuracy before/after.

Writes ``benchmarks/results/headline.json`` and ``headline.png``, and rewrites the table between the
markers in ``benchmarks/README.md``.

    python benchmarks/headline.py --run runs/bench-search/nsga2 --profile profiles/cloud-vm-2core-x86.yaml

Goals (issue 9): >= 1.5x fewer parameters and >= 1.3x measured decode speed-up at <= 1 pt accuracy drop
on one task; the front ahead of both baselines at every matched size; GPTQ >= 6x smaller on disk than
fp32 at <= 2 pt drop. The script reports each goal as reached or not, with the gap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- headline:begin -->", "<!-- headline:end -->"


def spread(rows: list[dict], k: int) -> list[dict]:
    """Up to ``k`` rows evenly spaced over the list (sorted by size), always keeping both ends."""
    if len(rows) <= k:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (k - 1)) for i in range(k)})
    return [rows[i] for i in idx]


def table(result: dict) -> str:
    p = result["parent"]
    lines = [
        f"Task `{result['task']}` ({result['limit']} examples, seed {result['seed']}, weights {result['eval_dtype']} "
        f"for accuracy); decode speed measured on `{result['profile']}` ({result['threads']} threads, prompt "
        f"{result['workload']['prompt_tokens']}, {result['workload']['generate_tokens']} new tokens), all rows in one run.",
        "",
        "| sub-network | non-emb. params | fewer params | accuracy | Δ acc (pt) | decode tok/s | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| parent | {p['params'] / 1e6:.1f} M | 1.00x | {p['accuracy']:.3f} | 0.0 | {p['decode_tokens_per_s']:.1f} | 1.00x |",
    ]
    for i, row in enumerate(result["rows"]):
        for name, r in (("NAS", row["nas"]), ("layer drop", row["layer_drop"]), ("uniform MLP", row["uniform_mlp"])):
            lines.append(f"| {name} #{i + 1} | {r['params'] / 1e6:.1f} M | {p['params'] / r['params']:.2f}x | "
                         f"{r['accuracy']:.3f} | {100 * (r['accuracy'] - p['accuracy']):+.1f} | "
                         f"{r['decode_tokens_per_s']:.1f} | {r['decode_tokens_per_s'] / p['decode_tokens_per_s']:.2f}x |")
    g = result.get("gptq")
    if g:
        lines += ["", f"GPTQ {g['bits']}-bit (group {g['group_size']}) on `{g['subnet']}`: {g['size_bytes'] / 1e6:.1f} MB on disk "
                      f"vs {g['fp32_bytes'] / 1e6:.1f} MB fp32 of the parent ({g['smaller_than_parent_fp32']:.2f}x smaller), "
                      f"{g['smaller_than_subnet_fp32']:.2f}x vs the sub-network's own fp32 folder; "
                      f"accuracy {g['accuracy_before']:.3f} -> {g['accuracy_after']:.3f} on {g['accuracy_n']} examples."]
    lines += ["", "Goals:", ""]
    for goal in result["goals"]:
        lines.append(f"* {'reached' if goal['reached'] else 'NOT reached'}: {goal['goal']}. {goal['measured']}")
    return "\n".join(lines)


def write_readme(text: str) -> None:
    from toolkit.fileio import atomic_write_text

    old = README.read_text() if README.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in old:
        old += f"\n{BEGIN}\n{END}\n"
    head, rest = old.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(README, f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished search run directory (toolkit search --out)")
    ap.add_argument("--profile", required=True, help="the profile whose threads/workload time the rows")
    ap.add_argument("--points", type=int, default=5, help="front members to compare (spread over sizes)")
    ap.add_argument("--max-fraction", type=float, default=0.9, help="only front members below this share of the parent's params")
    ap.add_argument("--export", default=str(_common.RESULTS / "export.json"), help="export benchmark result (GPTQ row)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    import torch

    from toolkit.baselines import matched
    from toolkit.cli.common import data_dir, default_calibration_file
    from toolkit.elastic import extract, space_for
    from toolkit.evaluate import evaluate_task
    from toolkit.importance import load_or_compute_importance
    from toolkit.latency import subnet_measure_fn
    from toolkit.measure import torch_threads
    from toolkit.models import load_model
    from toolkit.profiles import load_profile, warn_if_foreign
    from toolkit.progress import progress_bar
    from toolkit.search import load_evaluations
    from toolkit.space import SubnetConfig
    from toolkit.tasks import get_task, load_task

    run = Path(args.run)
    record = json.loads((run / "run.json").read_text())
    meta = record["meta"]
    pareto = json.loads((run / "pareto.json").read_text())
    profile = load_profile(args.profile)
    warn_if_foreign(profile)
    eval_dtype = meta.get("eval_dtype") or profile.runtime.dtype
    seed = record["settings"]["seed"]
    limit = meta.get("limit")
    task_data = load_task(get_task(meta["task"]), data_dir(args.data_dir))

    # Two copies: the profile's dtype for timing, the search's evaluation dtype for accuracy.
    timed = load_model(meta["model"], dtype=profile.runtime.dtype, device=profile.runtime.device)
    if timed.model_hash != meta["model_hash"]:
        raise SystemExit(f"{run / 'run.json'}: meta.model_hash: the run searched {meta['model_hash']}, "
                         f"{meta['model']} is now {timed.model_hash}")
    graded = timed if eval_dtype == profile.runtime.dtype else load_model(meta["model"], dtype=eval_dtype)
    imp = load_or_compute_importance(timed, default_calibration_file(None, args.data_dir))
    space = space_for(timed, imp)
    measure = subnet_measure_fn(timed, imp, profile, args.repeats)
    shape = space.parent
    evaluated = {e.key: e for e in load_evaluations(run)}

    def accuracy(cfg: SubnetConfig) -> dict:
        e = evaluated.get(cfg.key())
        if e is not None and "accuracy" in e.metrics:  # the search already graded it on the same examples
            return {"accuracy": e.metrics["accuracy"], "accuracy_stderr": e.metrics.get("accuracy_stderr"), "from": "search"}
        child = extract(graded.model, cfg, imp)
        with torch_threads(profile.runtime.threads or 1):  # same examples and scores at any thread count
            r = evaluate_task(child, graded.tokenizer, task_data, limit=limit, seed=seed, progress=False)
        return {"accuracy": r.acc, "accuracy_stderr": r.acc_stderr, "from": "evaluated here"}

    def row(cfg: SubnetConfig) -> dict:
        m = measure(cfg)
        return {"config": cfg.to_dict(), "params": shape.num_params(cfg, include_embeddings=False), **accuracy(cfg),
                "decode_tokens_per_s": 1e3 / m.decode_ms_per_token, "prefill_ms": m.prefill_ms,
                "timing_flagged": bool(m.flagged)}

    parent_cfg = space.largest()
    parent_params = shape.num_params(parent_cfg, include_embeddings=False)
    front = sorted((SubnetConfig.from_dict(f["config"]) for f in pareto["front"]),
                   key=lambda c: shape.num_params(c, include_embeddings=False))
    front = [c for c in front if shape.num_params(c, include_embeddings=False) <= args.max_fraction * parent_params]
    chosen = spread(front, args.points)
    rows = []
    with progress_bar() as bar, torch.inference_mode():
        t = bar.add_task("headline", total=1 + 3 * len(chosen), info="parent")
        parent = row(parent_cfg)
        bar.advance(t)
        for cfg in chosen:
            target = shape.num_params(cfg, include_embeddings=False)
            r = {"nas": row(cfg)}
            bar.advance(t)
            for method in ("layer_drop", "uniform_mlp"):
                bar.update(t, info=f"{method} at {target / 1e6:.1f} M")
                r[method] = row(matched(space, method, target))
                bar.advance(t)
            r["nas_ahead_of_both"] = all(r["nas"]["accuracy"] > r[m]["accuracy"] for m in ("layer_drop", "uniform_mlp"))
            rows.append(r)

    # GPTQ composition, from the export benchmark (its own run; sizes on disk do not depend on load).
    gptq = None
    exp_path = Path(args.export)
    if exp_path.exists():
        exp = json.loads(exp_path.read_text())
        if "gptq" in exp and exp["gptq"].get("details"):
            d = exp["gptq"]["details"]
            fp32_parent = 4 * shape.num_params(parent_cfg)  # fp32 bytes of every weight, embeddings included
            fp32_subnet = 4 * shape.num_params(SubnetConfig.from_dict(exp["subnet"]))
            gptq = {"subnet": SubnetConfig.from_dict(exp["subnet"]).key()[:12], "bits": d.get("bits"),
                    "group_size": d.get("group_size"), "size_bytes": d["size_bytes"], "fp32_bytes": fp32_parent,
                    "smaller_than_parent_fp32": fp32_parent / d["size_bytes"],
                    "smaller_than_subnet_fp32": fp32_subnet / d["size_bytes"],
                    "accuracy_before": exp["gptq"]["before"]["task"]["acc"], "accuracy_after": exp["gptq"]["after"]["task"]["acc"],
                    "accuracy_n": exp["gptq"]["before"]["task"]["n"],
                    "perplexity_before": exp["gptq"]["before"]["perplexity"]["value"],
                    "perplexity_after": exp["gptq"]["after"]["perplexity"]["value"],
                    "drop_pts": 100 * (exp["gptq"]["before"]["task"]["acc"] - exp["gptq"]["after"]["task"]["acc"])}

    # The goals, each with what was measured.
    pa, ptps = parent["accuracy"], parent["decode_tokens_per_s"]
    cand = [r["nas"] for r in rows]
    within = [r for r in cand if 100 * (pa - r["accuracy"]) <= 1.0]
    best = max(within, key=lambda r: parent_params / r["params"], default=None)
    goals = []
    if best:
        ratio, speed = parent_params / best["params"], best["decode_tokens_per_s"] / ptps
        goals.append({"goal": ">= 1.5x fewer parameters and >= 1.3x decode speed-up at <= 1 pt accuracy drop",
                      "reached": ratio >= 1.5 and speed >= 1.3,
                      "measured": f"smallest compared front member within 1 pt: {ratio:.2f}x fewer params, {speed:.2f}x decode, "
                                  f"{100 * (best['accuracy'] - pa):+.1f} pt."})
    else:
        goals.append({"goal": ">= 1.5x fewer parameters and >= 1.3x decode speed-up at <= 1 pt accuracy drop",
                      "reached": False, "measured": "no compared front member is within 1 pt of the parent."})
    ahead = sum(r["nas_ahead_of_both"] for r in rows)
    goals.append({"goal": "the NAS front ahead of both pruning baselines at every matched size",
                  "reached": bool(rows) and ahead == len(rows),
                  "measured": f"ahead of both at {ahead} of {len(rows)} matched sizes."})
    if gptq:
        goals.append({"goal": "GPTQ >= 6x smaller on disk than fp32 at <= 2 pt drop",
                      "reached": gptq["smaller_than_parent_fp32"] >= 6 and gptq["drop_pts"] <= 2,
                      "measured": f"{gptq['smaller_than_parent_fp32']:.2f}x smaller than the parent's fp32 weights, "
                                  f"{gptq['drop_pts']:+.1f} pt drop after quantization."})
    result = {"run": str(run), "model": meta["model"], "model_hash": meta["model_hash"], "task": meta["task"],
              "limit": limit, "seed": seed, "eval_dtype": eval_dtype, "profile": profile.name,
              "threads": profile.runtime.threads,
              "workload": {"prompt_tokens": profile.workload.prompt_tokens, "generate_tokens": profile.workload.generate_tokens},
              "parent": parent, "rows": rows, "gptq": gptq, "goals": goals}
    path = _common.write("headline", result)
    text = table(result)
    write_readme(text + f"\n\nRegenerate: `{_common.command()}`")
    plot(result, _common.RESULTS / "headline.png")
    print(text)
    print("->", path)


def plot(result: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is optional
        return
    p = result["parent"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, marker in (("nas", "NAS front", "o"), ("layer_drop", "layer dropping", "s"),
                               ("uniform_mlp", "uniform MLP pruning", "^")):
        xs = [r[key]["params"] / 1e6 for r in result["rows"]]
        ys = [r[key]["accuracy"] for r in result["rows"]]
        ax.plot(xs, ys, marker=marker, linestyle="-" if key == "nas" else "--", label=label)
    ax.scatter([p["params"] / 1e6], [p["accuracy"]], marker="*", s=150, color="k", label="parent", zorder=5)
    ax.set_xlabel("non-embedding parameters (M)")
    ax.set_ylabel(f"{result['task']} accuracy ({result['limit']} examples)")
    ax.set_title("Searched sub-networks vs pruning at matched size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from toolkit.report import save_png

    save_png(fig, path, dpi=120)


if __name__ == "__main__":
    main()
