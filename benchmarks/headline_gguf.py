"""The headline's composition with llama.cpp quantization (issue 17): GGUF q8_0 and q4_k_m rows for its best
sub-network, next to GPTQ.

For the configuration of the headline's best front member within 1 pt (``headline.json``
``best_within_1pt``), cut from ``--model`` (the headline's super-network by default):

* the fp32 sub-network in PyTorch (the reference of every accuracy difference here),
* its GGUF exports (:func:`toolkit.export.gguf.write_gguf`; quantized by llama.cpp's own quantizer) in each
  ``--types`` type, scored *in llama.cpp* (:class:`toolkit.evaluate.LlamaCppScorer`) on the same report-part
  examples as the headline (its tasks, ``report_limit`` and seed), with paired differences to the fp32
  sub-network (:func:`toolkit.stats.paired_from_results`),
* bytes on disk against the parent's fp32 (every tensor, embeddings included), and decode tokens/s in
  llama.cpp with the profile's threads and workload (one run, side by side).

The rows go into ``headline.json`` under ``"gguf"`` (with this script's command) and into the headline
table. Evaluations are cached in ``<results>/headline_gguf.partial.json`` (atomically, per row and task),
so a killed run resumes.

    python benchmarks/headline_gguf.py --model smollm2-135m --data-dir /work/shared/data

Goal (issue 17): the q4_k_m row >= 6x smaller on disk than the parent's fp32 at <= 2 pt drop on the report part.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import headline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="the model to cut the best configuration from (default: the "
                                                   "headline's super-network)")
    ap.add_argument("--profile", default=None, help="threads and workload of the timing (default: a shipped llama.cpp "
                                                    "profile of this machine)")
    ap.add_argument("--types", default="q8_0,q4_k_m")
    ap.add_argument("--tasks", default=None, help="comma-separated subset of the headline's tasks (default: all)")
    ap.add_argument("--work", default="/work/headline-gguf", help="folder for the GGUF files")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--results-dir", default=str(_common.RESULTS))
    args = ap.parse_args(argv)
    command_line = "python benchmarks/headline_gguf.py " + " ".join(shlex.quote(a) for a in argv)

    import toolkit
    from toolkit.fileio import data_dir, default_calibration_file
    from toolkit.elastic import extract, parent_shape
    from toolkit.engines.llamacpp import LlamaCpp
    from toolkit.evaluate import LlamaCppScorer, evaluate_task
    from toolkit.export.gguf import write_gguf
    from toolkit.importance import load_or_compute_importance
    from toolkit.calibrate.latency import measure_model
    from toolkit.measure import torch_threads
    from toolkit.models import load_model
    from toolkit.errors import UserError
    from toolkit.export.gguf import source_gguf_of
    from toolkit.profiles import load_profile, profile_for_this_machine
    from toolkit.progress import progress_bar
    from toolkit.space import SubnetConfig
    from toolkit.stats import paired_from_results
    from toolkit.tasks import get_task, load_task

    results_dir = Path(args.results_dir)
    path = results_dir / "headline.json"
    result = json.loads(path.read_text())
    best = next((b for b in result["best_within_1pt"].values() if b), None)
    if best is None:
        print("error: headline.json has no best row within 1 pt", file=sys.stderr)
        return 2
    cfg = SubnetConfig.from_dict(best["config"])
    model_ref = args.model or result["supernet"]["model"]
    try:
        profile = load_profile(args.profile) if args.profile else profile_for_this_machine("llama.cpp")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    threads, wl = profile.runtime.threads, profile.workload
    loaded = load_model(model_ref)
    imp = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
    child = extract(loaded.model, cfg, imp)
    shape = parent_shape(loaded.model)
    parent_fp32 = 4 * shape.num_params(shape.full_config())  # every weight, embeddings included (tied: once)
    names = [t.strip() for t in (args.tasks or ",".join(result["tasks"])).split(",") if t.strip()]
    tasks = {n: load_task(get_task(n), data_dir(args.data_dir)) for n in names}
    limit, seed = result["report_limit"], result["seed"]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    files = {}
    for t in types:
        files[t] = work / f"{cfg.key()[:12]}-{loaded.model_hash}-toolkit{toolkit.__version__}-{t}.gguf"
        if not files[t].exists():
            write_gguf(child, files[t], gguf_type=t, tokenizer=loaded.tokenizer, threads=threads,
                       source_gguf=source_gguf_of(loaded))
    cache = headline.PartialCache(results_dir / "headline_gguf.partial.json")
    res: dict[tuple[str, str], Any] = {}
    with progress_bar() as bar:
        task = bar.add_task("GGUF rows", total=len(tasks) * (1 + len(types)), info="")
        for side in ["fp32", *types]:
            for n, td in tasks.items():
                key = cache.key(loaded.model_hash, f"{cfg.key()}/{side}", n, headline.SPLIT, limit, seed, "gguf")
                ids = [e.id for e in td.split(headline.SPLIT).select(limit, seed).examples]
                r = cache.get(key, ids)
                if r is None:
                    bar.update(task, info=f"{side} on {n}")
                    scorer = child if side == "fp32" else LlamaCppScorer(files[side], threads=threads)
                    with torch_threads(threads):
                        r = evaluate_task(scorer, loaded.tokenizer, td, limit=limit, seed=seed, split=headline.SPLIT,
                                          progress=False)
                    cache.put(key, r)
                res[(side, n)] = r
                bar.advance(task)
    speed = {}
    with torch_threads(threads):
        m = measure_model(child, wl.prompt_tokens, wl.generate_tokens, 1, repeats=args.repeats)
    speed["fp32"] = {"engine": "torch eager", "decode_tokens_per_s": m.decode_tokens_per_s}
    for t in types:
        with LlamaCpp(files[t], threads=threads, n_ctx=wl.prompt_tokens + wl.generate_tokens + 8, logits_all=False) as lm:
            speed[t] = {"engine": "llama.cpp", "decode_tokens_per_s": lm.measure(wl.prompt_tokens, wl.generate_tokens,
                                                                                 args.repeats).decode_tokens_per_s}
    rows = []
    for side in ["fp32", *types]:
        size = 4 * shape.num_params(cfg) if side == "fp32" else files[side].stat().st_size
        row = {"type": side, "bytes": size, "smaller_than_parent_fp32": parent_fp32 / size, **speed[side], "tasks": {}}
        for n in tasks:
            r = res[(side, n)]
            cell = {"acc": r.acc, "report_examples": r.n, "engine": r.engine}
            if side != "fp32":
                cell.update(headline._paired(paired_from_results(res[("fp32", n)], r)))
            row["tasks"][n] = cell
        rows.append(row)
    q4 = next((r for r in rows if r["type"] == "q4_k_m"), None)
    gguf = {"command": command_line, "model": model_ref, "model_hash": loaded.model_hash,
            "is_the_headline_supernetwork": loaded.model_hash == result["supernet"]["model_hash"],
            "config_key": cfg.key(), "from_row": best["row"], "profile": profile.name, "threads": threads,
            "parent_fp32_bytes": parent_fp32, "rows": rows}
    if q4:
        worst = min(c["delta_pt"] for c in q4["tasks"].values())
        gguf["goal"] = {"goal": "GGUF q4_k_m >= 6x smaller on disk than the parent's fp32 at <= 2 pt drop (report part)",
                        "reached": q4["smaller_than_parent_fp32"] >= 6 and worst >= -2.0,
                        "measured": f"{q4['smaller_than_parent_fp32']:.2f}x smaller, worst task {worst:+.1f} pt vs the "
                                    "fp32 sub-network"}
    result["gguf"] = gguf
    result["goals"] = [g for g in result["goals"] if not g["goal"].startswith("GGUF")] + ([gguf["goal"]] if q4 else [])
    from toolkit.fileio import atomic_write_json

    atomic_write_json(path, result)
    text = headline.table(result)
    headline.write_readme(headline.README, text + f"\n\nRegenerate: `{result['command']}`; GGUF rows: `{command_line}`")
    print(headline.gguf_table(result))
    print("->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
