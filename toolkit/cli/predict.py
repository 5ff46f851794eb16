"""``toolkit predict``: predicted prefill latency, decode speed and peak memory of a sub-network."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  toolkit predict --predictor run/predictor.json --config subnet.json    # a table
  toolkit predict --predictor run/predictor.json --full --json           # one JSON object on stdout:
      {"prefill_ms": ..., "decode_ms_per_token": ..., "peak_mem_bytes": ..., "decode_tokens_per_s": ...,
       "params": ..., "profile": "...", "calibrated": true}
"""


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict a sub-network's speed and memory on the calibrated device",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictor", required=True, help="the predictor JSON that toolkit calibrate wrote")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="sub-network JSON (SubnetConfig, or a pareto.json entry)")
    g.add_argument("--full", action="store_true", help="the parent model itself")
    p.set_defaults(func=run)


def run(args) -> int:
    from toolkit.calibrate import Predictor
    from toolkit.space import SubnetConfig

    pred = Predictor.load(args.predictor)
    cfg = pred.shape.full_config() if args.full else SubnetConfig.load(args.config)
    pred.shape.check(cfg, args.config)  # the same check as eval --subnet: fits the parent, whole GQA groups
    out = pred.predict(cfg)
    out.update(profile=pred.profile_name, calibrated=pred.calibrated)
    from toolkit.cli.common import emit

    emit(args, out, title=f"toolkit predict: {'the parent' if args.full else args.config}")
    return 0
