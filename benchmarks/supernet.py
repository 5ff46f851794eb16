"""Sub-networks cut from the fine-tuned super-network vs from the original model, side by side.

For the full network and five fixed sub-network sizes (about 50-90 % of the parent's non-embedding
parameters, inside the space the super-network was trained for), both sides are extracted with
``toolkit.elastic.extract`` (original: the original model + its activation-aware importance; super-network:
the fine-tuned folder + its own sorted importance) and evaluated with the shared evaluator
(``toolkit.evaluate``): WikiText-2 test perplexity on a fixed token budget and arc_easy accuracy on a
fixed seeded subset. The training curve (held-out C4 perplexity of the monitored sub-networks vs step)
comes from the super-network's ``finetune.json``.

Each result is stored in ``benchmarks/results/supernet.partial.json`` as soon as it exists, so a killed
run continues where it stopped (``--only original`` can run while training is still going).

    python benchmarks/supernet.py --supernet /work/supernet-smollm2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def sizes(shape, layer_order):
    """The five fixed sub-networks (uniform, so any export path handles them) plus the full network."""
    from toolkit.space import SubnetConfig

    L, H = shape.num_layers, shape.num_heads
    kv_group = shape.group_size

    def cfg(depth, mlp, heads):
        layers = tuple(sorted(layer_order[:depth]))
        return SubnetConfig(layers, (mlp,) * depth, (heads,) * depth)

    return {
        "full": cfg(L, shape.intermediate_size, H),
        "mlp1280": cfg(L, 1280, H),
        "depth27_mlp1280": cfg(27, 1280, H),
        "mlp1024_heads6": cfg(L, 1024, H - kv_group),
        "mlp768": cfg(L, 768, H),
        "mlp512": cfg(L, 512, H),
    }


def machine() -> dict:
    """The shared benchmark machine record, with the profile fingerprint of this machine."""
    sys.path.insert(0, str(HERE))
    import _common

    return _common.machine()


def evaluate(model, tokenizer, args) -> dict:
    import torch

    from toolkit.evaluate import evaluate_task, perplexity

    torch.manual_seed(0)
    with torch.inference_mode():
        # stride = window - 1: every window after the first re-reads one token, so the first token it scores
        # has context (toolkit.evaluate.perplexity indexes position -1 when stride == window).
        ppl = perplexity(model, tokenizer, str(Path(args.data_dir) / "wikitext2" / "test.txt"), window=args.window,
                         stride=args.window - 1, max_tokens=args.ppl_tokens)
        arc = evaluate_task(model, tokenizer, "arc_easy", limit=args.arc_limit, seed=0, data_dir=args.data_dir, progress=False)
    return {"wikitext2_ppl": ppl.perplexity, "ppl_tokens_scored": ppl.tokens_scored, "arc_easy_acc": arc.acc,
            "arc_easy_acc_stderr": arc.acc_stderr, "arc_easy_acc_norm": arc.acc_norm, "arc_easy_n": arc.n,
            "eval_seconds": round(ppl.seconds + arc.seconds, 1)}


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    curve = result["training_curve"]["val_ppl"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    names = list(curve[0]["val_ppl"]) if curve else []
    for name in names:
        ax.plot([c["step"] for c in curve], [c["val_ppl"][name] for c in curve], marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out C4 perplexity (log)")
    ax.set_title("super-network training curve")
    ax.legend(fontsize=8)
    ax = axes[1]
    rows = result["rows"]
    x = [r["non_embedding_fraction"] for r in rows]
    for side, marker in (("original", "s"), ("supernet", "o")):
        ax.plot(x, [r[side]["wikitext2_ppl"] for r in rows], marker=marker, linestyle="", label=f"cut from {side}")
    for r in rows:
        ax.annotate(r["name"], (r["non_embedding_fraction"], r["supernet"]["wikitext2_ppl"]), fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("non-embedding parameters (fraction of parent)")
    ax.set_ylabel("WikiText-2 perplexity (log)")
    ax.set_title("sub-networks: original vs super-network")
    ax.legend(fontsize=8)
    fig.tight_layout()
    from toolkit.report import save_png

    save_png(fig, path, dpi=110)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", default="/work/supernet-smollm2", help="folder written by `toolkit finetune`")
    p.add_argument("--model", default="smollm2-135m", help="the original parent")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--ppl-tokens", type=int, default=8192, help="WikiText-2 token budget (first N tokens)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--arc-limit", type=int, default=200)
    p.add_argument("--dtype", default="auto", help="weights dtype for evaluation, both sides alike (auto: bfloat16 on CPUs "
                   "with native bf16, where it is ~2x faster, else float32: emulated bf16 is slower)")
    p.add_argument("--only", choices=("original", "supernet", "all"), default="all")
    p.add_argument("--train-history", default=None,
                   help="how the super-network was trained, for folders whose finetune.json predates its 'sessions' record")
    p.add_argument("--out", default=str(RESULTS / "supernet.json"))
    args = p.parse_args(argv)
    if args.dtype == "auto":
        from toolkit.measure import bf16_is_fast

        args.dtype = "bfloat16" if bf16_is_fast() else "float32"

    from toolkit.cli.common import data_dir, default_calibration_file
    from toolkit.elastic import extract, parent_shape
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model

    args.data_dir = str(data_dir(args.data_dir))
    partial_path = Path(args.out).with_suffix(".partial.json")
    partial = json.loads(partial_path.read_text()) if partial_path.is_file() else {}
    settings = {"ppl_tokens": args.ppl_tokens, "window": args.window, "stride": args.window - 1, "arc_limit": args.arc_limit, "dtype": args.dtype}
    if partial.get("settings") not in (None, settings):
        partial = {}
    partial["settings"] = settings

    from toolkit.fileio import atomic_write_json

    sides = ["original", "supernet"] if args.only == "all" else [args.only]
    configs = None
    for side in sides:
        loaded = load_model(args.model if side == "original" else args.supernet, dtype=args.dtype)
        imp = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
        shape = parent_shape(loaded.model)
        configs = sizes(shape, imp.layer_order())
        for name, cfg in configs.items():
            key = f"{side}/{name}"
            if key in partial:
                continue
            t0 = time.perf_counter()
            child = loaded.model.eval() if name == "full" else extract(loaded.model, cfg, imp)
            res = evaluate(child, loaded.tokenizer, args)
            res["config"] = cfg.to_dict()
            res["model_hash"] = loaded.model_hash
            partial[key] = res
            atomic_write_json(partial_path, partial)
            print(f"{key}: ppl {res['wikitext2_ppl']:.2f} arc_easy {res['arc_easy_acc']:.3f} "
                  f"({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)
            del child
    if args.only != "all":
        return 0

    finetune_info = json.loads((Path(args.supernet) / "finetune.json").read_text())
    shape = parent_shape(load_model(args.model).model)
    full_params = shape.num_params(shape.full_config(), include_embeddings=False)
    rows = []
    for name, cfg in configs.items():
        o, s = partial[f"original/{name}"], partial[f"supernet/{name}"]
        n = shape.num_params(cfg, include_embeddings=False)
        rows.append({
            "name": name, "config": cfg.to_dict(), "non_embedding_params": n,
            "non_embedding_fraction": round(n / full_params, 4),
            "original": {k: v for k, v in o.items() if k not in ("config",)},
            "supernet": {k: v for k, v in s.items() if k not in ("config",)},
            "ppl_ratio_supernet_over_original": s["wikitext2_ppl"] / o["wikitext2_ppl"],
            "arc_easy_delta_pts": 100 * (s["arc_easy_acc"] - o["arc_easy_acc"]),
        })
    cfg_ft = finetune_info["config"]
    secs = finetune_info.get("step_seconds", [])
    result = {
        "benchmark": "supernet",
        "command": "python benchmarks/supernet.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_command": finetune_info.get("command"),  # the last invocation; all of them below
        "train_sessions": finetune_info.get("sessions") or args.train_history,
        "machine": machine(),
        "settings": settings,
        "training": {
            "steps_done": finetune_info["steps_done"], "config": cfg_ft,
            "stopped_early": finetune_info.get("stopped_early"),
            "tokens_seen": finetune_info["steps_done"] * finetune_info["train_tokens_per_step"],
            "step_seconds_median": sorted(secs)[len(secs) // 2] if secs else None,
            "train_minutes": round(sum(secs) / 60, 1),
            "search_space": {k: finetune_info["search_space"][k] for k in ("mlp_choices", "head_choices", "depth_choices")},
        },
        "full_network_arc_easy_delta_pts": rows[0]["arc_easy_delta_pts"],
        "rows": rows,
        "training_curve": {
            "val_ppl": finetune_info["val_ppl_curve"],
            "monitor_configs": finetune_info["monitor_configs"],
            "loss": finetune_info["loss_curve"],
        },
    }
    out = Path(args.out)
    atomic_write_json(out, result)
    png = out.with_suffix(".png")
    if plot(result, png):
        print(f"wrote {png}", file=sys.stderr)
    print(f"{'sub-network':18s} {'params':>6s} {'ppl orig':>9s} {'ppl super':>9s} {'arc orig':>8s} {'arc super':>9s}")
    for r in rows:
        print(f"{r['name']:18s} {r['non_embedding_fraction']:6.2f} {r['original']['wikitext2_ppl']:9.2f} "
              f"{r['supernet']['wikitext2_ppl']:9.2f} {r['original']['arc_easy_acc']:8.3f} {r['supernet']['arc_easy_acc']:9.3f}")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
