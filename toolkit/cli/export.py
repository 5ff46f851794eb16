"""``toolkit export``: write a chosen sub-network as HF / ONNX / GPTQ / GGUF, each verified (stage 4 of 4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolkit.cli.common import add_data_dir_arg

EXAMPLES = """examples:
  toolkit export run/search --pick 0 --format hf,onnx --out run/export          # front member 0 (most accurate)
  toolkit export run/search --pick fastest-within:0.01 --format hf,onnx,gptq --out run/export --resume
  toolkit export --model smollm2-135m --config subnet.json --format hf,onnx,gptq --out out/
  toolkit export run/search --pick 0 --format gguf --gguf-type q4_k_m --out run/export   # for llama.cpp / ollama
  toolkit export ... --out run/export --json     # one JSON object on stdout, by format, instead of the table:
      {"onnx": {"folder": "run/export/onnx", "kept": false, "parity": {...}, "throughput": {...}}, ...}
  toolkit verify run/export/onnx
"""


def register(sub) -> None:
    from toolkit.cli.common import non_negative_int, positive_int

    p = sub.add_parser("export", help="stage 4: export a sub-network (hf, onnx, gptq, gguf) with a manifest", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="search run directory (reads its pareto.json)")
    p.add_argument("--pick", default="0",
                   help="front member: an index (0 = most accurate), or 'fastest-within:0.01' (fastest member "
                        "within 0.01 accuracy of the parent; needs the parent's measured accuracy)")
    p.add_argument("--config", help="sub-network JSON instead of a run")
    p.add_argument("--model", help="parent model (default: the run's)")
    p.add_argument("--format", default="hf,onnx", help="comma-separated: hf, onnx, gptq, gguf")
    p.add_argument("--gguf-type", default=None,
                   help="GGUF file type: f32, f16, q8_0, q4_k_m, ... (llama.cpp's quantizer makes the quantized ones; "
                        "default: the profile's runtime.gguf_type with engine llama.cpp, else f16)")
    p.add_argument("--out", required=True, help="artifact folder: one sub-folder per format, each with a manifest.json")
    p.add_argument("--profile", default=None, help="device profile (default: the run's); sets threads and workload")
    p.add_argument("--predictor", default=None, help="predictor JSON for predicted throughput (--config only)")
    p.add_argument("--calibration", default=None, help="calibration text (importance and GPTQ)")
    p.add_argument("--bits", type=int, default=4, help="GPTQ weight bits (default 4)")
    p.add_argument("--group-size", type=int, default=64, help="GPTQ group size (must divide every layer input width)")
    p.add_argument("--gptq-samples", type=positive_int, default=32, help="GPTQ calibration windows of 512 tokens")
    p.add_argument("--task", default=None, help="task for accuracy before/after GPTQ (e.g. arc_easy)")
    p.add_argument("--limit", type=non_negative_int, default=200, help="task examples (0 = all)")
    p.add_argument("--overwrite", action="store_true", help="replace format folders that already exist")
    p.add_argument("--resume", action="store_true",
                   help="keep format folders that already verify (manifest and hashes, same sub-network and model) "
                        "and export only the others, e.g. after an interrupted export")
    add_data_dir_arg(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from toolkit.fileio import data_dir, default_calibration_file
    from toolkit.errors import UserError
    from toolkit.export import ExportRequest, parse_formats, plan_formats
    from toolkit.space import SubnetConfig

    # Everything about the arguments and the files they name is checked before the model loads.
    formats = parse_formats(args.format)
    if args.gguf_type is not None and "gguf" not in formats:
        raise UserError("--gguf-type: only applies to --format gguf")
    if "gguf" in formats:
        from toolkit.engines import require
        from toolkit.engines.llamacpp import gguf_type as check_gguf_type

        require("llama.cpp", "--format gguf")
        if args.gguf_type is not None:
            check_gguf_type(args.gguf_type)
    predicted, profile_ref, model, expected_hash = None, args.profile, args.model, None
    if args.run and args.config:
        raise UserError("give either a run directory or --config, not both")
    if args.run:
        from toolkit.export.pareto import PARETO_FILE, ParetoFront, parse_pick

        pick = parse_pick(args.pick)
        pareto = ParetoFront.read(Path(args.run))
        entry = pareto.pick(pick, str(Path(args.run) / PARETO_FILE))
        cfg, predicted = entry.config, dict(entry.metrics)
        model = model or pareto.model
        profile_ref = profile_ref or pareto.profile_ref()
        expected_hash = pareto.model_hash
    elif args.config:
        cfg = SubnetConfig.load(args.config)
    else:
        raise UserError("nothing to export: give a search run directory or --config")
    if not model:
        raise UserError("--model: required with --config")
    if args.config:  # (a run's members come from a search of its model, whose hash is checked once loaded)
        from toolkit.evaluate import peek_tokenizer
        from toolkit.space import check_fits_hf_config

        peeked = peek_tokenizer(model)  # config.json and tokenizer, no weights
        if peeked is not None:
            check_fits_hf_config(cfg, peeked[2], args.config)
    profile = None
    if profile_ref:
        from toolkit.profiles import load_profile

        profile = load_profile(profile_ref)
    pred = None
    if args.predictor and predicted is None:
        from toolkit.calibrate import Predictor

        pred = Predictor.load(args.predictor)
        if profile is not None:
            pred.check_engine(profile, args.predictor)
    if "onnx" in formats:
        from toolkit.export.onnx import require_onnx

        require_onnx()
    if "gptq" in formats:
        from toolkit.export.gptq import require_gptq

        require_gptq()
    source_gguf = None
    if "gguf" in formats:
        from toolkit.export.gguf import source_gguf_of
        from toolkit.models.loading import resolve_source

        source_gguf = source_gguf_of(resolve_source(model))
    gguf_type = args.gguf_type
    if gguf_type is None:
        engine = getattr(profile.runtime, "engine", "torch") if profile else "torch"
        gguf_type = (getattr(profile.runtime, "gguf_type", None) if engine == "llama.cpp" else None) or "f16"
    calib = default_calibration_file(args.calibration, args.data_dir)
    task_data = None
    if args.task and ("gptq" in formats or "gguf" in formats):
        from toolkit.tasks import get_task, load_task

        root = data_dir(args.data_dir)
        task_data = load_task(get_task(args.task, root), root)
    wl = profile.workload if profile else None
    req = ExportRequest(
        formats=formats, out=Path(args.out), threads=profile.runtime.threads if profile else None,
        prompt_tokens=wl.prompt_tokens if wl else 128, generate_tokens=wl.generate_tokens if wl else 32,
        gptq_bits=args.bits, gptq_group_size=args.group_size, gptq_samples=args.gptq_samples, calibration_file=calib,
        perplexity_file=data_dir(args.data_dir) / "wikitext2" / "test.txt" if {"gptq", "gguf"} & set(formats) else None,
        task_data=task_data, task_limit=args.limit or None, overwrite=args.overwrite, resume=args.resume,
        gguf_type=gguf_type, source_gguf=source_gguf,
    )
    req.check_out()

    from toolkit.elastic import check_fits, extract
    from toolkit.export import export_subnet
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model

    loaded = load_model(model)
    if expected_hash and loaded.model_hash != expected_hash:
        raise UserError(f"{args.run}/pareto.json: model_hash: the run searched {expected_hash}, {model} is {loaded.model_hash}")
    check_fits(loaded.model, cfg)
    source = {"model": str(model), "model_hash": loaded.model_hash, "source_kind": loaded.source.kind}
    keep = plan_formats(req, source, cfg.to_dict())
    if pred is not None:
        pred.check_model(loaded.model_hash, args.predictor)
        predicted = pred.predict(cfg)
    summary = {}
    if set(keep) != set(formats):
        importance = load_or_compute_importance(loaded, calib)
        child = extract(loaded.model, cfg, importance)
    else:
        child = None  # every format is kept: nothing to extract
    from toolkit.progress import status

    todo = [f for f in formats if f not in keep]
    with status(f"Exporting {', '.join(todo)} to {args.out}" if todo else f"Keeping {', '.join(keep)} in {args.out}"):
        done = export_subnet(
            child, loaded.tokenizer, req, source=source, subnet=cfg.to_dict(),
            profile={"name": profile.name, "fingerprint": profile.fingerprint} if profile else None,
            predicted=predicted, keep=keep,
        )
    for fmt, folder in done.items():
        m = json.loads((folder / "manifest.json").read_text())
        summary[fmt] = {"folder": str(folder), "kept": fmt in keep, "parity": m["parity"], "throughput": m["throughput"]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(summary, args.out)
    return 0


def _number(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _print_table(summary: dict, out: str) -> None:
    """One row per format: where it is, whether it was kept, its parity and its speed (the manifest has the rest)."""
    from rich.table import Table

    from toolkit.progress import stdout_console

    t = Table(title=f"toolkit export: {out}")
    for col in ("format", "folder", "kept", "max |logit diff|", "decode tok/s", "predicted tok/s"):
        t.add_column(col, justify="left" if col in ("format", "folder", "kept") else "right")
    for fmt, s in summary.items():
        parity, speed = s["parity"], s["throughput"]
        t.add_row(fmt, s["folder"], "yes" if s["kept"] else "no", _number(parity.get("max_abs_logit_diff"), ".2e"),
                  _number(speed.get("measured_decode_tokens_per_s"), ".1f"),
                  _number(speed.get("predicted_decode_tokens_per_s"), ".1f"))
    stdout_console().print(t)
