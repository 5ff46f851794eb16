"""Predictor accuracy on this machine (issue 4).

Calibrates the latency/memory predictor on <= 20 sub-networks of SmolLM2-135M chosen to cover the
space, then measures >= 15 *other* random sub-networks and compares: MAPE, share within +-10 %,
Kendall tau for prefill ms, decode tok/s and peak memory; also the error of the uncalibrated
(spec/roofline-only) predictor. Writes benchmarks/results/predictor.json.

    python benchmarks/predictor.py --profile profiles/cloud-vm-2core-x86.yaml [--samples 16] [--test 16]

Run it on a quiet machine: other processes on the same cores make CPU timings meaningless.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--test", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--save", default=None, help="also write the fitted predictor here (usable by `toolkit search`)")
    args = ap.parse_args()

    import numpy as np

    from toolkit.fileio import default_calibration_file
    from toolkit.elastic import parent_shape, model_space
    from toolkit.importance import load_or_compute_importance
    from toolkit.calibrate.latency import subnet_measure_fn
    from toolkit.models import load_model
    from toolkit.calibrate import Hardware, Predictor, calibrate, choose_calibration_configs
    from toolkit.profiles import load_profile, warn_if_foreign

    profile = load_profile(args.profile)
    warn_if_foreign(profile)
    loaded = load_model(args.model, dtype=profile.runtime.dtype, device=profile.runtime.device)
    imp = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
    space = model_space(loaded, imp)
    prior = Predictor.prior(loaded.model_hash, profile.name, profile.fingerprint, parent_shape(loaded.model),
                            Hardware.from_profile(profile), profile.workload)
    measure = subnet_measure_fn(loaded, imp, profile, args.repeats)
    train = choose_calibration_configs(space, args.samples, seed=args.seed)
    t0 = time.perf_counter()
    fitted = calibrate(prior, train, measure, progress=lambda i, m: print(
        f"calib {i}/{len(train)}: prefill {m.prefill_ms:.1f} ms, decode {1e3 / m.decode_ms_per_token:.1f} tok/s, "
        f"mem {m.peak_mem_bytes / 2**20:.0f} MiB", flush=True))
    calib_seconds = time.perf_counter() - t0
    if args.save:
        fitted.save(args.save)
    rng = np.random.default_rng(args.seed + 1)
    seen = {c.key() for c in train}
    test = []
    while len(test) < args.test:
        c = space.sample(rng)
        if c.key() not in seen:
            seen.add(c.key())
            test.append(c)
    measured = []
    for i, c in enumerate(test):
        m = measure(c)
        measured.append(m)
        p = fitted.predict(c)
        print(f"test {i + 1}/{len(test)}: decode {1e3 / m.decode_ms_per_token:.1f} vs predicted "
              f"{p['decode_tokens_per_s']:.1f} tok/s; prefill {m.prefill_ms:.1f} vs {p['prefill_ms']:.1f} ms", flush=True)
    held_out = fitted.evaluate(measured)
    uncalibrated = prior.evaluate(measured)
    goals = {"decode_tokens_per_s": {"mape_pct": 5, "within_10pct": 0.9, "kendall_tau": 0.85},
             "prefill_ms": {"mape_pct": 5, "within_10pct": 0.9, "kendall_tau": 0.85},
             "peak_mem_bytes": {"mape_pct": 5}, "calibration_seconds": 600}
    out = _common.write("predictor", {
        "model": args.model, "model_hash": loaded.model_hash, "profile": profile.name,
        "workload": fitted.to_dict()["workload"], "threads": profile.runtime.threads,
        "calibration": {"samples": len(train), "seconds": round(calib_seconds, 1), "cv": fitted.cv},
        "held_out": held_out, "uncalibrated_held_out": uncalibrated, "goals": goals,
        "coefficients": fitted.to_dict()["coefficients"],
        "test_measurements": [m.to_dict() | {"predicted": fitted.predict(m.config)} for m in measured],
        "flagged_noisy": sum(m.flagged for m in measured) + sum(m.flagged for m in fitted.measurements),
    })
    for t in ("decode_tokens_per_s", "prefill_ms", "peak_mem_bytes"):
        r = held_out[t]
        print(f"{t:22s} MAPE {r['mape_pct']:5.2f} %  within10 {r['within_10pct']:.0%}  tau {r['kendall_tau']:.3f}"
              f"   (uncalibrated MAPE {uncalibrated[t]['mape_pct']:.1f} %)")
    print(f"calibration {calib_seconds:.0f} s -> {out}")


if __name__ == "__main__":
    main()
