"""``toolkit calibrate``: time sub-networks on this machine and fit the latency/memory predictor (stage 2 of 4).

Sub-networks are timed in the profile's ``runtime.engine`` (torch, onnxruntime, or llama.cpp at
``runtime.gguf_type``); the engine's package is checked before the model loads."""

from __future__ import annotations

import argparse
from pathlib import Path

from toolkit.cli.common import add_data_dir_arg, add_model_arg, emit
from toolkit.fileio import default_calibration_file

EXAMPLES = """examples:
  toolkit calibrate --profile run/profile.yaml --model smollm2-135m --samples 16 --out run/predictor.json
  toolkit calibrate --refit run/predictor.json --out run/predictor.json   # refit saved measurements, no timing
  toolkit calibrate ... --out run/predictor.json --json   # the summary as one JSON object on stdout, not a table:
      {"out": "run/predictor.json", "samples": 16, "engine": "torch", "cv": {...}}
      (with --refit: {"out": ..., "cv": {...}}; with --samples 0: {"out": ..., "calibrated": false})
  toolkit calibrate --profile h100-sxm --model smollm2-135m --samples 0 --out prior.json  # spec-only roofline
  toolkit calibrate --profile cloud-vm-2core-x86-llamacpp --model smollm2-135m --samples 16 --out run/llamacpp.json
                                                        # timed as q8_0 GGUF in llama.cpp (the [llamacpp] extra)
  toolkit calibrate --profile orin.yaml --model smollm2-135m --executor ray --ray-address auto \
      --ray-resource jetson-orin --out run/orin.json     # timed on the board that ran
                                                        # ray start --address HEAD:6379 --resources '{"jetson-orin": 1}'
"""


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="stage 2: measure sub-networks on this machine, fit the predictor",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arg(p, required=False)
    p.add_argument("--profile", help="device profile (name in profiles/ or a YAML file)")
    p.add_argument("--samples", type=int, default=16, help="sub-networks to measure (0: roofline prior only)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement")
    p.add_argument("--seed", type=int, default=0, help="seed of the sub-networks chosen to time (default 0)")
    p.add_argument("--refit", default=None, help="refit an existing predictor JSON from its saved measurements")
    p.add_argument("--calibration", default=None, help="calibration text for importance")
    p.add_argument("--out", required=True, help="predictor JSON to write")
    add_data_dir_arg(p)
    from toolkit.search.executors import add_executor_args

    add_executor_args(p, resource=True, default_threads_help="the profile's runtime.threads")
    p.set_defaults(func=run)


def check_args(args) -> None:
    """Every argument error, before any file is created or the model loads (one line, exit 2)."""
    from toolkit.errors import UserError

    if args.repeats < 1:
        raise UserError(f"--repeats: need at least 1 timed repeat per measurement, got {args.repeats}")
    if args.samples < 0 or args.samples == 1:
        raise UserError(f"--samples: 0 (roofline prior only) or at least 2 sub-networks to measure, got {args.samples}")
    if args.seed < 0:
        raise UserError(f"--seed: must be a non-negative integer, got {args.seed}")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out: {out} is a directory; name the predictor JSON file to write")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out: {out}: {parent} is not a directory")
    if not args.refit and not args.profile:
        raise UserError("--profile: required (unless --refit)")


def journal_path(out: str | Path) -> Path:
    """Where a calibration writing ``out`` journals its measurements (removed once ``out`` is saved)."""
    return Path(out).with_suffix(".measurements.jsonl")


def run(args) -> int:
    import sys

    from toolkit.errors import UserError
    from toolkit.calibrate import Predictor, calibrate, choose_calibration_configs

    check_args(args)
    if args.refit:
        old = Predictor.load(args.refit)
        if not old.measurements:
            raise UserError(f"{args.refit}: measurements: nothing to refit (no saved measurements)")
        new = old.fit(old.measurements)
        new.save(args.out)
        emit(args, {"out": args.out, "cv": new.cv}, title="toolkit calibrate --refit")
        return 0
    from toolkit.elastic import parent_shape, model_space
    from toolkit.importance import load_or_compute_importance
    from toolkit.calibrate import CalibrationWorker, Hardware, foreign_node_error, machine_record, recording_where
    from toolkit.calibrate.latency import subnet_measure_fn
    from toolkit.models import load_model
    from toolkit.profiles import load_profile, warn_if_foreign

    from toolkit.search.executors import RayExecutor, model_reference, spec_from_args

    profile = load_profile(args.profile)
    spec = spec_from_args(args, default_threads=profile.runtime.threads or 1)
    executor = None
    if args.samples:
        from toolkit.engines import require
        from toolkit.profiles import find_profile

        # Sub-networks are timed in the profile's engine: a missing one is a one-line error before the model loads.
        require(profile.runtime.engine, f"{find_profile(args.profile)}: runtime.engine")
        if spec.parallel:  # Ray missing, an unreachable cluster, a resource no node has: one line, now
            executor = RayExecutor(None, spec).connect()
        else:
            warn_if_foreign(profile)  # timing on a machine the profile does not describe
    # A spec-only prior times nothing: the model is only read for its shape and hash, on the CPU. Nor does
    # the driver of a Ray calibration (its workers load the model on the target): its shape, hash and
    # importance ordering are all it needs, on the CPU (a CPU-only head can calibrate a CUDA board).
    timing_here = bool(args.samples) and executor is None
    device = profile.runtime.device if timing_here else "cpu"
    loaded = load_model(args.model, dtype=profile.runtime.dtype if args.samples else "float32", device=device)
    prior = Predictor.prior(loaded.model_hash, profile.name, profile.fingerprint, parent_shape(loaded.model),
                            Hardware.from_profile(profile), profile.workload)
    if args.samples == 0:
        prior.save(args.out)
        emit(args, {"out": args.out, "calibrated": False}, title="toolkit calibrate: roofline prior (nothing timed)")
        return 0
    importance = load_or_compute_importance(loaded, default_calibration_file(args.calibration, args.data_dir))
    space = model_space(loaded, importance)
    configs = choose_calibration_configs(space, args.samples, seed=args.seed)
    from toolkit.progress import progress_bar

    journal = journal_path(args.out)
    runtime = {"device": profile.runtime.device, "threads": profile.runtime.threads}
    warned: set[str] = set()

    def check(m):  # where each measurement was taken is recorded; a named target must be the profile's machine
        where = m.measured_on
        if where.get("fingerprint") == profile.fingerprint or where.get("node_id") in warned:
            return
        if spec.resource:
            raise UserError(foreign_node_error(profile, where, spec.resource))
        if executor is not None:
            warned.add(where.get("node_id", ""))
            print(f"warning: {foreign_node_error(profile, where, None)}", file=sys.stderr)

    try:
        measure = None
        if executor is None:
            # Exporting engines write each sub-network's temporary artifact next to the predictor file.
            measure = recording_where(subnet_measure_fn(loaded, importance, profile, args.repeats,
                                                        workdir=Path(args.out).resolve().parent),
                                      machine_record(profile.kind, profile.runtime.device))
        else:
            executor.factory = CalibrationWorker(model_reference(args.model), loaded.model_hash, profile.runtime.dtype, profile.runtime.device,
                                                 importance, profile, args.repeats, strict=spec.resource is not None,
                                                 resource=spec.resource, worker_gpus=spec.worker_gpus)
            with progress_bar() as bar:
                bar.add_task(f"start {spec.workers} Ray worker(s)" + (f" on '{spec.resource}'" if spec.resource else ""),
                             total=None, info="")
                executor.start()
        with progress_bar() as bar:
            task = bar.add_task("calibrate", total=len(configs), info="")

            def progress(done, m):
                bar.update(task, completed=done, info=f"{1e3 / m.decode_ms_per_token:.1f} tok/s, prefill {m.prefill_ms:.0f} ms")

            fitted = calibrate(prior, configs, measure, journal, progress, repeats=args.repeats, runtime=runtime,
                               executor=executor, check=check)
    finally:
        if executor is not None:
            executor.close()
    fitted.save(args.out)
    journal.unlink(missing_ok=True)
    emit(args, {"out": args.out, "samples": len(configs), "engine": fitted.hardware.engine_label, "cv": fitted.cv},
         title="toolkit calibrate")
    return 0
