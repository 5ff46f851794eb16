"""``toolkit finetune``: train the parent once as a super-network so that its sub-networks are usable."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from toolkit.cli.common import add_data_dir_arg, add_model_arg, positive_float, positive_int

EXAMPLES = """examples:
  toolkit finetune --model smollm2-135m --steps 420 --out ~/supernet-smollm2
  toolkit finetune --model smollm2-135m --steps 600 --out ~/supernet-smollm2 --resume   # continue
  toolkit finetune --model ./my-llama --data my_text.jsonl --train lora --steps 200 --out sn/
  toolkit finetune --model smollm2-135m --profile h100-sxm --out sn/   # on the profile's device (cuda), bf16

The output folder is a normal HF folder (parent shapes) with importance.safetensors and finetune.json;
search, eval, calibrate and export accept it as --model. Its checkpoint/ sub-folder only serves --resume
and can be deleted afterwards. Training text defaults to <data-dir>/calibration/c4_sample.jsonl (the
last --val-docs documents are held out for the perplexity monitor); never train on evaluation sets.
"""


def register(sub) -> None:
    from toolkit.finetune.config import FinetuneConfig

    p = sub.add_parser("finetune", help="fine-tune a parent once as a super-network (sandwich rule + distillation)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    p.add_argument("--data", default=None, help="training text: JSONL with a 'text' field, or plain text (default: <data-dir>/calibration/c4_sample.jsonl)")
    p.add_argument("--out", required=True, help="output folder (the super-network; checkpoints go to OUT/checkpoint)")
    add_config_args(p, FinetuneConfig, skip=("precision", "version"))
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="autocast dtype; auto = bf16 where the device has native bf16 (the profile's features.bf16; "
                        "without --profile, this machine's: AVX512-BF16/AMX CPUs, CUDA capability >= 8.0), else fp32")
    p.add_argument("--workers", type=positive_int, default=1, help="local distillation: layer jobs run in this many worker processes (threads split between them)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint (same settings; --steps may grow)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this much wall-clock time (checkpoint + save; --resume continues). SIGTERM does the same")
    p.add_argument("--max-cpu-minutes", type=positive_float, default=None, help="stop cleanly once training has used this much CPU time in all (all sessions and threads, monitor evaluations excluded): a budget that does not depend on what else the machine runs")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT exists")
    p.add_argument("--profile", default=None, help="device profile (name or YAML file): its runtime.device is the default --device and its features.bf16 decides --precision auto")
    p.add_argument("--device", default=None, help="train on cpu, cuda or cuda:N (default: the --profile's runtime.device, else cpu)")
    p.add_argument("--calibration", default=None, help="calibration text for the importance ordering (default: <data-dir>/calibration/calibration.txt)")
    add_data_dir_arg(p)
    from toolkit.search.executors import add_executor_args

    add_executor_args(p, workers=False, default_threads_help="this process's threads / --workers")
    p.set_defaults(func=run)


_PARSE = {"int": int, "float": float, "str": str}


def add_config_args(p: argparse.ArgumentParser, config_cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of the dataclass ``config_cls`` (``seq_len`` -> ``--seq-len``), with the
    field's default, its ``metadata["help"]`` (and ``["choices"]``), and its ``metadata["check"]`` run on
    the value so that a bad flag is refused before anything loads. A bool field is a switch."""
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"]
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=f.default, help=help_text)
            continue
        choices = f.metadata.get("choices")
        p.add_argument(flag, type=_flag_type(_PARSE[f.type], f.metadata["check"]), default=f.default, choices=choices,
                       help=f"{help_text} (default {f.default})")


def _flag_type(parse, check):
    """An argparse ``type``: parse the text, then run the config field's check on it."""
    from toolkit.schema import Invalid

    def convert(text: str):
        try:
            return check(parse(text))
        except ValueError as exc:  # Invalid is a ValueError; int("x") and float("x") raise one too
            problem = exc.problem if isinstance(exc, Invalid) else f"{text!r} is not {'an integer' if parse is int else 'a number'}"
            raise argparse.ArgumentTypeError(problem) from None

    convert.__name__ = parse.__name__  # argparse names the type in its messages
    return convert


def run(args) -> int:
    from toolkit.fileio import data_dir, default_calibration_file
    from toolkit.finetune import FinetuneConfig, auto_precision, finetune
    from toolkit.profiles import check_device, load_profile

    executor = None
    if args.executor == "ray":  # the local phase's layer jobs on Ray workers (--workers of them)
        from toolkit.search.executors import RayExecutor, spec_from_args

        executor = spec_from_args(args)
        RayExecutor(None, executor).connect()  # Ray missing or the cluster unreachable: one line, before loading
    elif args.ray_address or args.worker_threads or args.worker_gpus:
        from toolkit.errors import UserError

        raise UserError("--ray-address / --worker-threads / --worker-gpus: need --executor ray")
    profile = load_profile(args.profile) if args.profile else None
    device = check_device(args.device or (profile.runtime.device if profile is not None else "cpu"))
    precision = args.precision if args.precision != "auto" else auto_precision(device, profile)
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(FinetuneConfig) if f.name not in ("version", "precision")}
    config = FinetuneConfig(**fields, precision=precision)
    data = Path(args.data) if args.data else data_dir(args.data_dir) / "calibration" / "c4_sample.jsonl"
    calibration = default_calibration_file(args.calibration, args.data_dir)
    out = finetune(args.model, data, args.out, config, calibration, resume=args.resume, overwrite=args.overwrite,
                   max_minutes=args.max_minutes,
                   command=args.command_line, device=device, max_cpu_minutes=args.max_cpu_minutes,
                   workers=args.workers, executor=executor)
    if out is None:  # the local phase stopped between layers (budget or SIGTERM): nothing saved yet
        print("finetune: stopped in the local phase; the layers done are kept, --resume continues", file=sys.stderr)
        return 3
    if args.json:
        print(json.dumps({"out": str(out)}, indent=2))
    else:
        print(out)
    return 0
