"""``toolkit eval``: task accuracy (lm-eval's acc / acc_norm) or perplexity of a model or a sub-network;
``--engine llama.cpp`` scores the same tasks in llama.cpp on a GGUF file (an exported artifact, measured
in the engine it is deployed in)."""

from __future__ import annotations

import argparse
import json
import sys

from toolkit.cli.common import add_data_dir_arg, add_model_arg
from toolkit.fileio import default_calibration_file

EXAMPLES = """examples:
  toolkit eval --model smollm2-135m --task arc_easy --limit 200          # seeded fixed subset (search)
  toolkit eval --model smollm2-135m --task arc_easy,piqa --split report  # held-out half (reports)
  toolkit eval --model smollm2-135m --task arc_easy,piqa                 # full sets
  toolkit eval --model smollm2-135m --subnet run/best.json --task hellaswag --limit 500
  toolkit eval --model smollm2-135m --task mmlu --num-fewshot 5 --limit 1000
  toolkit eval --model ./my-llama --task my_items.jsonl                  # any JSONL in the common schema
  toolkit eval --task my_items.jsonl --num-fewshot 5 --fewshot-file my_train.jsonl   # seeded as lm-eval draws
  toolkit eval --task my_task.yaml                                       # an lm-eval task YAML (multiple_choice)
  toolkit eval --task truthfulqa_mc2                                     # mc2: several true answers per item
  toolkit eval --model smollm2-135m --task wikitext2 --max-tokens 20000  # perplexity (window 512)
  toolkit eval --model smollm2-135m --text notes.txt --window 256 --stride 128
  toolkit eval --engine llama.cpp --model child.q4_k_m.gguf --task arc_easy --split report  # in llama.cpp
  toolkit eval --list                                                    # the registered tasks
"""


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy on lm-eval tasks, or perplexity", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p, required=False)
    p.add_argument("--engine", choices=("torch", "llama.cpp"), default="torch",
                   help="what scores the requests: PyTorch (default), or llama.cpp on a .gguf --model (an exported "
                        "artifact, measured where it runs; needs the llamacpp extra); same tasks, prompts and metrics")
    p.add_argument("--kv-cache", choices=("f16", "f32"), default=None,
                   help="llama.cpp's KV cache type (default f16, llama.cpp's own; f32 for parity with PyTorch)")
    p.add_argument("--task", default=None,
                   help="comma-separated task names (see --list), .jsonl files in the common schema, or lm-eval task "
                        ".yaml files (relative paths: the current folder, then the data directory)")
    p.add_argument("--text", default=None, help="perplexity of this text file instead of a task")
    p.add_argument("--subnet", default=None, help="evaluate this sub-network (SubnetConfig JSON) of the model")
    p.add_argument("--limit", type=int, default=0,  # the same words as search's --limit
                   help="a seeded fixed subset of N examples of the --split part; 0 = all of them (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit subset")
    p.add_argument("--split", choices=("search", "report", "all"), default="all",
                   help="which part of each task: 'report' is the half `toolkit search` never sees (use it for "
                        "numbers you report: the search's own accuracies are selected on and biased upwards), "
                        "'search' the half it selects on, 'all' every example (default); --limit draws within it")
    p.add_argument("--num-fewshot", type=int, default=None,
                   help="few-shot examples (default: the task's, 0 unless a YAML sets num_fewshot; mmlu: 0 or 5; "
                        "user files and YAMLs: any)")
    p.add_argument("--fewshot-file", default=None,
                   help="a .jsonl file (common schema) to draw a user file's shots from (default: the file itself, "
                        "each example's own row left out, as lm-eval does when shots come from the test split)")
    p.add_argument("--fewshot-seed", type=int, default=None,
                   help="seed of the few-shot draws (lm-eval's fewshot_random_seed; default 1234)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="tokens per packed forward (default: the evaluator's, 2048)")
    p.add_argument("--window", type=int, default=512, help="perplexity window (tokens)")
    p.add_argument("--stride", type=int, default=None, help="perplexity stride (default: the window)")
    p.add_argument("--max-tokens", type=int, default=None, help="perplexity: score at most the first N tokens")
    p.add_argument("--add-bos-token", action="store_true", help="prepend BOS as lm-eval's add_bos_token=True does")
    p.add_argument("--dtype", default="float32", help="torch dtype of the weights (default float32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the engine (torch's default, or half the cores in llama.cpp; 1 is fastest "
                        "when other jobs share the cores)")
    p.add_argument("--calibration", default=None, help="calibration text for importance (--subnet)")
    p.add_argument("--per-example", action="store_true", help="include per-example log-likelihoods in the JSON")
    p.add_argument("--out", default=None, help="also write the JSON record to this file (atomically)")
    p.add_argument("--list", action="store_true", help="list the registered tasks and exit")
    add_data_dir_arg(p)
    p.set_defaults(func=run)


def _list_tasks() -> int:
    from rich.table import Table

    from toolkit.tasks import list_tasks

    t = Table(title="toolkit eval tasks (or pass a .jsonl file in the common schema, or an lm-eval task .yaml)")
    for col in ("task", "file (in the data dir)", "scoring", "metrics", "few-shot", "about"):
        t.add_column(col)
    for task in list_tasks():
        metrics = ", ".join(f"{m} {'↑' if task.higher_is_better[m] else '↓'}" for m in task.metrics)
        shots = "any" if task.fewshot_options is None else "/".join(map(str, task.fewshot_options))
        t.add_row(task.name, task.file, task.scoring, metrics, shots, task.description)
    from toolkit.progress import stdout_console

    stdout_console().print(t)
    return 0


def _load(args, subnet):
    from toolkit.errors import ConfigError, UserError
    from toolkit.models import load_model

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    model = loaded.model
    if subnet is not None:
        from toolkit.elastic import check_fits, extract
        from toolkit.importance import load_or_compute_importance

        try:
            check_fits(loaded.model, subnet)
        except ConfigError as exc:
            raise UserError(f"{args.subnet}: {exc}") from None
        importance = load_or_compute_importance(loaded, default_calibration_file(args.calibration, args.data_dir))
        model = extract(loaded.model, subnet, importance)
    return loaded, model


def _check_numbers(args) -> None:
    """Every numeric flag, before anything is read or loaded."""
    from toolkit.errors import UserError

    if args.limit < 0:  # the same check and words as search's --limit
        raise UserError(f"--limit: must be 0 (all examples) or positive, got {args.limit}")
    for flag, value, low in (("--batch-tokens", args.batch_tokens, 1),
                             ("--threads", args.threads, 1), ("--window", args.window, 2), ("--stride", args.stride, 1),
                             ("--max-tokens", args.max_tokens, 2), ("--num-fewshot", args.num_fewshot, 0),
                             ("--seed", args.seed, 0), ("--fewshot-seed", args.fewshot_seed, 0)):
        if value is not None and value < low:
            raise UserError(f"{flag}: must be at least {low}, got {value}")
    if args.stride is not None and args.stride > args.window:
        raise UserError(f"--stride: must not exceed --window ({args.window}), got {args.stride}")
    import torch

    if not isinstance(getattr(torch, args.dtype, None), torch.dtype):
        raise UserError(f"--dtype: unknown torch dtype {args.dtype!r} (float32, bfloat16, float16)")


def _check_lengths(prepared, tokenizer, max_length: int, args) -> None:
    """Refuse a continuation longer than the model's maximum length (file:line); warn once per task
    whose contexts will be cut from the left."""
    import sys

    from toolkit.evaluate import check_task_lengths, truncation_warning

    for task, data in prepared:
        if task is None or task.scoring == "perplexity":
            continue
        subset = data.select(args.limit, args.seed)
        cut = check_task_lengths(subset, tokenizer, max_length, True if args.add_bos_token else None)
        if cut:
            print(truncation_warning(task.name, cut, len(subset), max_length), file=sys.stderr)


def _check_engine(args) -> None:
    """The flags --engine llama.cpp can honour, a .gguf model, and llama-cpp-python importable: one-line
    errors before any task is read or model loaded."""
    from toolkit.errors import UserError

    if args.engine != "llama.cpp":
        if args.kv_cache is not None:
            raise UserError("--kv-cache: is llama.cpp's KV cache type; pass it with --engine llama.cpp")
        return
    for flag, given in (("--subnet", args.subnet), ("--text", args.text), ("--batch-tokens", args.batch_tokens),
                        ("--dtype", args.dtype != "float32"),
                        ("--device", args.device != "cpu")):
        if given:
            hint = (" (export the sub-network: toolkit export --format gguf, and evaluate that file)"
                    if flag == "--subnet" else " (the GGUF's own tensor types run on llama.cpp's CPU backend)"
                    if flag in ("--dtype", "--device") else "")
            raise UserError(f"{flag}: not with --engine llama.cpp{hint}")
    from toolkit.models.loading import resolve_source

    if resolve_source(args.model).kind not in ("gguf", "embedded"):
        raise UserError(f"{args.model}: --engine llama.cpp runs a .gguf file, not a Hugging Face folder "
                        "(export one with toolkit export --format gguf)")
    from toolkit.engines import require

    require("llama.cpp", "--engine")


def _tasks(args, root):
    """The --task list as Task entries (registered names, .jsonl files, lm-eval YAMLs), with
    --fewshot-file applied to the user files."""
    from dataclasses import replace

    from toolkit.errors import UserError
    from toolkit.tasks import find_task_file, get_task

    tasks = [get_task(n.strip(), root) for n in (args.task or "").split(",") if n.strip()]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"--task: {dup} is named twice (two files with the same name? name a YAML's task key differently)")
    if args.fewshot_file is None:
        return tasks
    if args.text or not tasks:
        raise UserError("--fewshot-file: draws shots for a --task file, not for --text")
    if args.num_fewshot is None or args.num_fewshot == 0:
        raise UserError("--fewshot-file: pass --num-fewshot K as well (how many shots to draw)")
    out = []
    for t in tasks:
        if t.source != "jsonl":
            why = ("its few-shot rows are fixed (mmlu: the subject's dev rows)" if t.source == "registry" else
                   "a YAML names its own few-shot split (fewshot_split)")
            raise UserError(f"--fewshot-file: only for .jsonl task files; {t.name}: {why}")
        out.append(replace(t, fewshot_file=str(find_task_file(args.fewshot_file, root))))
    return out


def run(args) -> int:
    if args.list:
        return _list_tasks()
    from toolkit.errors import UserError

    if not args.task and not args.text:
        raise UserError("eval: pass --task NAME[,NAME...] or --text FILE (see --list)")
    _check_numbers(args)
    args.limit = args.limit or None  # 0 = every example of the part, as in search
    _check_engine(args)
    from toolkit.fileio import data_dir, optional_data_dir
    from toolkit.tasks import FEWSHOT_SEED, labels_warning, load_task

    tasks = _tasks(args, optional_data_dir(args.data_dir))
    perplexity_tasks = [t.name for t in tasks if t.scoring == "perplexity"]
    if args.engine == "llama.cpp" and perplexity_tasks:
        raise UserError(f"--engine llama.cpp: scores tasks' choices; {', '.join(perplexity_tasks)} is a perplexity "
                        "corpus (evaluate it with --engine torch)")
    if args.split != "all":
        if args.text:
            raise UserError(f"--split {args.split}: splits tasks' examples; --text is a perplexity text (use --split all)")
        for t in tasks:
            if t.scoring == "perplexity":
                raise UserError(f"--split {args.split}: {t.name} is a perplexity corpus, not split into parts "
                                "(use --split all, or evaluate it separately)")
    needs_data = any(t.source == "registry" for t in tasks)
    root = data_dir(args.data_dir) if needs_data else None
    # Read and validate every task file before the model loads: a bad file fails in a second, not minutes.
    prepared = []
    seed = FEWSHOT_SEED if args.fewshot_seed is None else args.fewshot_seed
    for t in tasks:
        if t.scoring == "perplexity":
            path = t.path(root)
            if not path.is_file():
                raise UserError(f"{path}: perplexity corpus not found")
            prepared.append((t, path))
        else:
            data = load_task(t, root, args.num_fewshot, seed).split(args.split)
            warning = labels_warning(data, t.metrics)
            if warning:
                print(warning, file=sys.stderr)
            prepared.append((t, data))
    if args.text:
        from pathlib import Path

        if not Path(args.text).is_file():
            raise UserError(f"{args.text}: text file not found")
        prepared.append((None, Path(args.text)))
    if args.engine == "llama.cpp":
        return _finish(args, _run_llamacpp(args, prepared))

    subnet = None
    if args.subnet:
        from toolkit.space import SubnetConfig

        subnet = SubnetConfig.load(args.subnet)  # its format now; whether it fits the parent once that loads
    from toolkit.evaluate import model_max_length, peek_tokenizer

    peeked = peek_tokenizer(args.model)
    if peeked is not None:
        _check_lengths(prepared, *peeked[:2], args)
        if subnet is not None:
            from toolkit.space import check_fits_hf_config

            check_fits_hf_config(subnet, peeked[2], args.subnet)
    from toolkit.measure import torch_threads

    with torch_threads(args.threads):  # scoped: the caller's thread count is back afterwards
        loaded, model = _load(args, subnet)
        if peeked is None:
            _check_lengths(prepared, loaded.tokenizer, model_max_length(model), args)
        results = _evaluate(args, prepared, loaded, model)
    record = {
        "version": 1,
        "command": args.command_line,
        "model": args.model,
        "model_hash": loaded.model_hash,
        "engine": "torch",
        "subnet": subnet.to_dict() if subnet else None,
        "dtype": args.dtype,
        "device": args.device,
        "results": results,
    }
    return _finish(args, record)


def _run_llamacpp(args, prepared) -> dict:
    """Score every task in llama.cpp on the GGUF, with the PyTorch path's tokenizer and requests."""
    from toolkit.engines import version
    from toolkit.evaluate import LlamaCppScorer, evaluate_task, gguf_tokenizer
    from toolkit.fileio import sha256_file_cached
    from toolkit.models.loading import resolve_source

    path = resolve_source(args.model).path
    tokenizer = gguf_tokenizer(path)
    kv_cache = args.kv_cache or "f16"
    with LlamaCppScorer(path, threads=args.threads, kv_f32=kv_cache == "f32") as scorer:
        _check_lengths(prepared, tokenizer, scorer.max_length, args)
        results = []
        for _, data in prepared:
            r = evaluate_task(scorer, tokenizer, data, limit=args.limit, seed=args.seed,
                              add_bos_token=True if args.add_bos_token else None)
            results.append({"file": str(data.file), **r.to_dict(per_example=args.per_example)})
        threads = scorer.threads_used
    return {
        "version": 1,
        "command": args.command_line,
        "model": args.model,
        "model_hash": sha256_file_cached(path)[:16],  # the GGUF file's sha256: the artifact llama.cpp ran
        "engine": "llama.cpp",
        "engine_version": version("llama.cpp"),
        "gguf_file_type": scorer.file_type,
        "kv_cache": kv_cache,
        "threads": threads,
        "subnet": None,
        "dtype": None,
        "device": "cpu",
        "results": results,
    }


def _finish(args, record) -> int:
    from toolkit.fileio import atomic_write_json

    if args.out:
        atomic_write_json(args.out, record)
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    _print_table(record)
    return 0


def _evaluate(args, prepared, loaded, model) -> list:
    from toolkit.evaluate import DEFAULT_BATCH_TOKENS, evaluate_task, perplexity

    results = []
    for task, data in prepared:
        if task is None or task.scoring == "perplexity":
            r = perplexity(model, loaded.tokenizer, data, window=args.window, stride=args.stride, max_tokens=args.max_tokens)
            results.append({"task": task.name if task else str(data), "file": str(data), **r.to_dict()})
        else:
            r = evaluate_task(model, loaded.tokenizer, data, limit=args.limit, seed=args.seed,
                              add_bos_token=True if args.add_bos_token else None, max_batch_tokens=args.batch_tokens or DEFAULT_BATCH_TOKENS)
            results.append({"file": str(data.file), **r.to_dict(per_example=args.per_example)})
    return results


def _print_table(record) -> None:
    from rich.table import Table

    engine = f" in llama.cpp ({record['gguf_file_type']})" if record.get("engine") == "llama.cpp" else ""
    t = Table(title=f"toolkit eval {record['model']}" + (" (sub-network)" if record["subnet"] else "") + engine)
    for col in ("task", "n", "metric", "value", "stderr", "chance", "seconds"):
        t.add_column(col, justify="right" if col not in ("task", "metric") else "left")
    for r in record["results"]:
        if "perplexity" in r:
            t.add_row(r["task"], str(r["tokens_scored"]), "perplexity ↓", f"{r['perplexity']:.3f}", "", "",
                      f"{r['seconds']:.1f}")
            continue
        shown = list(r["metrics"]) + [m for m in ("acc", "acc_norm", "mc2") if m not in r["metrics"] and m in r]
        for m in shown:
            official = "" if m in r["metrics"] else " (not reported by lm-eval)"
            shots = f" {r['num_fewshot']}-shot" if r["num_fewshot"] else ""
            part = f" ({r['split']} part)" if r.get("split", "all") != "all" else ""
            chance = r.get("chance", {}).get(m)
            t.add_row(r["task"] + shots + part, str(r["n"]), m + " ↑" + official, f"{r[m]:.4f}", f"±{r[m + '_stderr']:.4f}",
                      "" if chance is None else f"{chance:.4f}", f"{r['seconds']:.1f}")
    from toolkit.progress import stdout_console

    stdout_console().print(t)
