"""``toolkit export``: write a chosen sub-network as HF / ONNX / GPTQ, each verified (stage 4 of 4)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from toolkit.cli.common import add_data_dir_arg

EXAMPLES = """examples:
  toolkit export run/search --pick 0 --format hf,onnx --out run/export          # front member 0 (most accurate)
  toolkit export --model smollm2-135m --config subnet.json --format hf,onnx,gptq --out out/
  toolkit verify run/export/onnx
"""


def register(sub) -> None:
    p = sub.add_parser("export", help="stage 4: export a sub-network (hf, onnx, gptq) with a manifest", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="search run directory (reads its pareto.json)")
    p.add_argument("--pick", default="0",
                   help="front member: an index (0 = most accurate), or 'fastest-within:0.01' (fastest member "
                        "within 0.01 accuracy of the parent)")
    p.add_argument("--config", help="sub-network JSON instead of a run")
    p.add_argument("--model", help="parent model (default: the run's)")
    p.add_argument("--format", default="hf,onnx", help="comma-separated: hf, onnx, gptq")
    p.add_argument("--out", required=True)
    p.add_argument("--profile", default=None, help="device profile (default: the run's); sets threads and workload")
    p.add_argument("--predictor", default=None, help="predictor JSON for predicted throughput (--config only)")
    p.add_argument("--calibration", default=None, help="calibration text (importance and GPTQ)")
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=64, help="GPTQ group size (must divide every layer input width)")
    p.add_argument("--gptq-samples", type=int, default=32, help="GPTQ calibration windows of 512 tokens")
    p.add_argument("--task", default=None, help="task for accuracy before/after GPTQ (e.g. arc_easy)")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--overwrite", action="store_true")
    add_data_dir_arg(p)
    p.set_defaults(func=run)


def pick_from_run(run_dir: Path, pick: str) -> dict:
    from toolkit.errors import UserError

    path = run_dir / "pareto.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: no pareto.json (run `toolkit search` or `toolkit report` first)")
    try:
        pareto = json.loads(path.read_text())
        front = pareto["front"]
    except (json.JSONDecodeError, KeyError):
        raise UserError(f"{path}: front: not a pareto.json written by toolkit search") from None
    if not front:
        raise UserError(f"{path}: front: empty (no feasible sub-network was found)")
    if pick.startswith("fastest-within:"):
        tol = float(pick.split(":", 1)[1])
        parent = (pareto.get("parent") or {}).get("metrics", {})
        ok = [f for f in front if f["metrics"]["accuracy"] >= parent.get("accuracy", 0) - tol]
        if not ok:
            raise UserError(f"{path}: no front member within {tol} accuracy of the parent")
        entry = max(ok, key=lambda f: f["metrics"].get("decode_tokens_per_s", 0))
    else:
        try:
            entry = front[int(pick)]
        except (ValueError, IndexError):
            raise UserError(f"--pick: {pick!r} is not an index into the {len(front)}-member front") from None
    return {"pareto": pareto, "entry": entry}


def run_profile_ref(pareto: dict) -> str | None:
    """The profile a search ran for: its file when it still exists (a measured profile written next to the
    run is not on the profile search path), else its name."""
    file = pareto.get("profile_file")
    if file and Path(file).is_file():
        return file
    return pareto.get("profile")


def run(args) -> int:
    from toolkit.cli.common import data_dir, default_calibration_file
    from toolkit.elastic import check_fits, extract
    from toolkit.errors import UserError
    from toolkit.export import ExportRequest, export_subnet
    from toolkit.importance import load_or_compute_importance
    from toolkit.models import load_model
    from toolkit.space import SubnetConfig

    predicted, profile_ref, model = None, args.profile, args.model
    if args.run and args.config:
        raise UserError("give either a run directory or --config, not both")
    if args.run:
        picked = pick_from_run(Path(args.run), args.pick)
        cfg = SubnetConfig.from_dict(picked["entry"]["config"], str(Path(args.run) / "pareto.json"))
        predicted = picked["entry"]["metrics"]
        model = model or picked["pareto"].get("model")
        profile_ref = profile_ref or run_profile_ref(picked["pareto"])
        expected_hash = picked["pareto"].get("model_hash")
    elif args.config:
        cfg = SubnetConfig.load(args.config)
        expected_hash = None
    else:
        raise UserError("nothing to export: give a search run directory or --config")
    if not model:
        raise UserError("--model: required with --config")
    profile = None
    if profile_ref:
        from toolkit.profiles import load_profile

        profile = load_profile(profile_ref)
    loaded = load_model(model)
    if expected_hash and loaded.model_hash != expected_hash:
        raise UserError(f"{args.run}/pareto.json: model_hash: the run searched {expected_hash}, {model} is {loaded.model_hash}")
    check_fits(loaded.model, cfg)
    calib = default_calibration_file(args.calibration, args.data_dir)
    importance = load_or_compute_importance(loaded, calib)
    if args.predictor and predicted is None:
        from toolkit.predictor import Predictor

        pred = Predictor.load(args.predictor)
        pred.check_model(loaded.model_hash, args.predictor)
        predicted = pred.predict(cfg)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    task_data = None
    if args.task and "gptq" in formats:
        from toolkit.tasks import get_task, load_task

        task_data = load_task(get_task(args.task), data_dir(args.data_dir))
    wl = profile.workload if profile else None
    req = ExportRequest(
        formats=formats, out=Path(args.out), threads=profile.runtime.threads if profile else None,
        prompt_tokens=wl.prompt_tokens if wl else 128, generate_tokens=wl.generate_tokens if wl else 32,
        gptq_bits=args.bits, gptq_group_size=args.group_size, gptq_samples=args.gptq_samples, calibration_file=calib,
        perplexity_file=data_dir(args.data_dir) / "wikitext2" / "test.txt" if "gptq" in formats else None,
        task_data=task_data, task_limit=args.limit, overwrite=args.overwrite,
    )
    child = extract(loaded.model, cfg, importance)
    from toolkit.progress import status

    with status(f"Exporting {', '.join(formats)} to {args.out}"):
        done = export_subnet(
            child, loaded.tokenizer, req,
            source={"model": str(model), "model_hash": loaded.model_hash, "source_kind": loaded.source.kind},
            subnet=cfg.to_dict(),
            profile={"name": profile.name, "fingerprint": profile.fingerprint} if profile else None,
            predicted=predicted,
        )
    summary = {}
    for fmt, folder in done.items():
        m = json.loads((folder / "manifest.json").read_text())
        summary[fmt] = {"folder": str(folder), "parity": m["parity"], "throughput": m["throughput"]}
    print(json.dumps(summary, indent=2))
    return 0
