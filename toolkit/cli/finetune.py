"""``toolkit finetune``: train the parent once as a super-network so that its sub-networks are usable."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolkit.cli.common import add_data_dir_arg, add_model_arg, non_negative_int, positive_float, positive_int

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
    from toolkit.finetune.config import METHODS, FinetuneConfig

    d = FinetuneConfig()
    p = sub.add_parser("finetune", help="fine-tune a parent once as a super-network (sandwich rule + distillation)",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p)
    p.add_argument("--data", default=None, help="training text: JSONL with a 'text' field, or plain text (default: <data-dir>/calibration/c4_sample.jsonl)")
    p.add_argument("--out", required=True, help="output folder (the super-network; checkpoints go to OUT/checkpoint)")
    p.add_argument("--method", choices=METHODS, default=d.method,
                   help=f"global: sandwich rule on whole sub-networks distilled from the teacher; local: blockwise local "
                        f"distillation (each layer's widths learn to reproduce the parent block from the parent's input; "
                        f"layers are independent jobs); local+global: local first, then global for the rest of the "
                        f"budget (default {d.method}; benchmarks/README.md compares them at one CPU budget)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"global optimizer steps in total (default {d.steps})")
    p.add_argument("--local-steps", type=non_negative_int, default=d.local_steps, help=f"local distillation: AdamW steps per layer (default {d.local_steps}; 0 = least squares only)")
    p.add_argument("--local-lr", type=positive_float, default=d.local_lr, help=f"local distillation learning rate (default {d.local_lr})")
    p.add_argument("--local-batch", type=positive_int, default=d.local_batch, help=f"windows per local step (default {d.local_batch})")
    p.add_argument("--local-windows", type=positive_int, default=d.local_windows, help=f"training windows whose parent activations are cached for the local phase (default {d.local_windows}; disk: windows x seq-len x hidden x 4 bytes per layer)")
    p.add_argument("--ls-init", action="store_true", help="refit o_proj / down_proj by closed-form least squares over the space's widths before local training (lowers narrow widths' error, raises the full network's; off by default)")
    p.add_argument("--workers", type=positive_int, default=1, help="local distillation: layer jobs run in this many worker processes (threads split between them)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint (same settings; --steps may grow)")
    p.add_argument("--max-minutes", type=float, default=None, help="stop cleanly after this much wall-clock time (checkpoint + save; --resume continues). SIGTERM does the same")
    p.add_argument("--max-cpu-minutes", type=positive_float, default=None, help="stop cleanly once training has used this much CPU time in all (all sessions and threads, monitor evaluations excluded): the fair budget on a shared machine")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT exists")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help=f"tokens per training window (default {d.seq_len})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"windows per micro-batch (default {d.batch_size})")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help=f"micro-batches per step (default {d.grad_accum})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr}; try 1e-3 with --train lora)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--num-random", type=int, default=d.num_random, help=f"random sub-networks per step besides largest and smallest (default {d.num_random})")
    p.add_argument("--teacher", choices=("original", "inplace"), default=d.teacher,
                   help="distil from the frozen original model (default; keeps the full network's accuracy) or from the super-network's full network (in-place, full network on the LM loss)")
    p.add_argument("--kd-temperature", type=float, default=d.kd_temperature)
    p.add_argument("--full-weight", type=float, default=d.full_weight, help=f"loss weight of the full network (default {d.full_weight}: keeps it close to the original)")
    p.add_argument("--train", choices=("full", "lora"), default=d.train, help="train full weights (default) or LoRA deltas merged at the end")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank)
    p.add_argument("--train-embeddings", action="store_true", help="also train the (tied) embeddings (default: frozen)")
    p.add_argument("--profile", default=None, help="device profile (name or YAML file): its runtime.device is the default --device and its features.bf16 decides --precision auto")
    p.add_argument("--device", default=None, help="train on cpu, cuda or cuda:N (default: the --profile's runtime.device, else cpu)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="autocast dtype; auto = bf16 where the device has native bf16 (the profile's features.bf16; "
                        "without --profile, this machine's: AVX512-BF16/AMX CPUs, CUDA capability >= 8.0), else fp32")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--min-mlp-fraction", type=float, default=d.min_mlp_fraction, help=f"search space trained for: narrowest MLP (default {d.min_mlp_fraction})")
    p.add_argument("--min-depth-fraction", type=float, default=d.min_depth_fraction, help=f"shallowest depth (default {d.min_depth_fraction})")
    p.add_argument("--min-head-groups", type=int, default=d.min_head_groups, help=f"fewest GQA head groups (default {d.min_head_groups})")
    p.add_argument("--mlp-step", type=int, default=d.mlp_step)
    p.add_argument("--val-docs", type=int, default=d.val_docs, help=f"documents held out from the end of --data for the monitor (default {d.val_docs})")
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--calibration", default=None, help="calibration text for the importance ordering (default: <data-dir>/calibration/calibration.txt)")
    add_data_dir_arg(p)
    from toolkit.executors import add_executor_args

    add_executor_args(p, workers=False, default_threads_help="this process's threads / --workers")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolkit.fileio import data_dir, default_calibration_file
    from toolkit.finetune import FinetuneConfig, auto_precision, finetune
    from toolkit.profiles import check_device, load_profile

    executor = None
    if args.executor == "ray":  # the local phase's layer jobs on Ray workers (--workers of them)
        from toolkit.executors import RayExecutor, spec_from_args

        executor = spec_from_args(args)
        RayExecutor(None, executor).connect()  # Ray missing or the cluster unreachable: one line, before loading
    elif args.ray_address or args.worker_threads or args.worker_gpus:
        from toolkit.errors import UserError

        raise UserError("--ray-address / --worker-threads / --worker-gpus: need --executor ray")
    profile = load_profile(args.profile) if args.profile else None
    device = check_device(args.device or (profile.runtime.device if profile is not None else "cpu"))
    precision = args.precision if args.precision != "auto" else auto_precision(device, profile)
    config = FinetuneConfig(
        method=args.method, local_steps=args.local_steps, local_lr=args.local_lr, local_batch=args.local_batch,
        local_windows=args.local_windows, ls_init=args.ls_init, steps=args.steps, seq_len=args.seq_len, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_steps=args.warmup_steps, num_random=args.num_random, teacher=args.teacher, kd_temperature=args.kd_temperature, full_weight=args.full_weight,
        train=args.train, lora_rank=args.lora_rank, train_embeddings=args.train_embeddings, precision=precision,
        seed=args.seed, mlp_step=args.mlp_step, min_mlp_fraction=args.min_mlp_fraction,
        min_depth_fraction=args.min_depth_fraction, min_head_groups=args.min_head_groups, val_docs=args.val_docs,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
    )
    data = Path(args.data) if args.data else data_dir(args.data_dir) / "calibration" / "c4_sample.jsonl"
    calibration = default_calibration_file(args.calibration, args.data_dir)
    out = finetune(args.model, data, args.out, config, calibration, resume=args.resume, overwrite=args.overwrite,
                   log=lambda s: print(s, file=sys.stderr, flush=True), max_minutes=args.max_minutes,
                   command=args.command_line, device=device, max_cpu_minutes=args.max_cpu_minutes,
                   workers=args.workers, executor=executor)
    if out is None:  # the local phase stopped between layers (budget or SIGTERM): nothing saved yet
        print("finetune: stopped in the local phase; the layers done are kept, --resume continues", file=sys.stderr)
        return 3
    print(out)
    return 0
