"""Export one found SmolLM2 sub-network as HF, ONNX and GPTQ and check each in its stock runtime (issue 8).

Records ONNX max |logit diff| and greedy parity, onnxruntime vs PyTorch eager decode tokens/s (same
threads, the profile's workload), GPTQ size on disk vs the fp32 and fp16 folders, and perplexity and
arc_easy accuracy before/after GPTQ; then re-verifies every artifact in a fresh process
(`toolkit verify`: stock transformers, onnxruntime, GPTQModel). Writes benchmarks/results/export.json.

    python benchmarks/export.py --run runs/bench-search-50/nsga2 --profile profiles/cloud-vm-2core-x86-1thread.yaml \\
        --out runs/bench-export [--formats hf,onnx,gptq] [--limit 200]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="search run directory to pick the sub-network from")
    ap.add_argument("--config", help="or a sub-network JSON (with --model)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--pick", default="fastest-within:0.02")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--formats", default="hf,onnx,gptq")
    ap.add_argument("--out", default="runs/bench-export")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    from toolkit.cli.main import main as toolkit

    cmd = ["export"] + ([args.run, "--pick", args.pick] if args.run else ["--config", args.config, "--model", args.model])
    cmd += ["--format", args.formats, "--out", args.out, "--profile", args.profile, "--task", "arc_easy",
            "--limit", str(args.limit), "--group-size", str(args.group_size), "--overwrite"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    rc = toolkit(cmd)
    if rc:
        raise SystemExit(f"toolkit export failed ({rc})")
    out = Path(args.out)
    manifests = {f: json.loads((out / f / "manifest.json").read_text()) for f in args.formats.split(",")}
    fresh = {}
    for fmt in manifests:
        r = subprocess.run([sys.executable, "-m", "toolkit.cli.main", "verify", str(out / fmt), "--json"],
                           capture_output=True, text=True)
        # --json: one object listing the folders' results (here one folder); a failure is a line on stderr
        fresh[fmt] = {"returncode": r.returncode,
                      "result": json.loads(r.stdout)["folders"][0] if r.returncode == 0 else r.stderr.strip()[-300:]}
    result = {"subnet": next(iter(manifests.values()))["subnet"], "source": next(iter(manifests.values()))["source"],
              "profile": args.profile, "verified_in_fresh_process": fresh}
    if "onnx" in manifests:
        m = manifests["onnx"]
        result["onnx"] = {"max_abs_logit_diff": m["parity"]["max_abs_logit_diff"], "goal_max_abs_logit_diff": 1e-3,
                          "greedy_32_equal": m["parity"]["greedy_equal"],
                          "ort_decode_tokens_per_s": m["throughput"]["measured_decode_tokens_per_s"],
                          "pytorch_eager_decode_tokens_per_s": m["throughput"]["pytorch_eager_decode_tokens_per_s"],
                          "speedup": m["throughput"]["speedup_vs_pytorch_eager"], "goal_speedup": 1.5,
                          "export_seconds": m["details"]["export_seconds"]}
    if "hf" in manifests:
        m = manifests["hf"]
        result["hf"] = {"max_abs_logit_diff": m["parity"]["max_abs_logit_diff"], "reloaded_by": m["parity"]["reloaded_by"],
                        "bytes": sum(f["bytes"] for f in m["files"].values()),
                        "pytorch_decode_tokens_per_s": m["throughput"]["measured_decode_tokens_per_s"],
                        "predicted_decode_tokens_per_s": m["throughput"]["predicted_decode_tokens_per_s"]}
    if "gptq" in manifests:
        m = manifests["gptq"]
        result["gptq"] = {"details": m["details"], "before": m["accuracy"]["before"], "after": m["accuracy"]["after"],
                          "decode_tokens_per_s": m["throughput"]["measured_decode_tokens_per_s"]}
    path = _common.write("export", result)
    print(json.dumps({k: v for k, v in result.items() if k in ("onnx", "gptq", "verified_in_fresh_process")}, indent=1))
    print("->", path)


if __name__ == "__main__":
    main()
