"""Deployment engines side by side (issue 17): where the parent runs fastest, how close to the memory roofline,
and whether the latency predictor calibrated *in llama.cpp* ranks sub-networks there.

One run, one machine, every engine with the profile's threads and workload (prompt, generated tokens):

1. **Engines.** The parent (SmolLM2-135M by default) in PyTorch eager fp32, onnxruntime (the toolkit's
   ONNX export), and llama.cpp from the toolkit's own GGUF export in f16, q8_0 and q4_k_m. Beside them,
   llama.cpp's *own* q8_0 conversion of the same weights: ``llama_model_quantize`` on the parent's source
   GGUF (requantized), the file a llama.cpp user would make. The toolkit's q8_0 and llama.cpp's are timed
   alternately (A B A B ...) so their ratio does not mix machine states. Each engine's decode speed is
   also given as a fraction of its bandwidth roofline: ``bandwidth / bytes read per generated token``
   (every weight tensor as stored, the tied embedding once as the LM head, plus the KV cache at the mean
   decode context) with the profile's measured bandwidth.
2. **Predictor in llama.cpp.** ``<= 20`` calibration sub-networks (:func:`toolkit.calibrate.choose_calibration_configs`)
   and ``>= 16`` other seeded random sub-networks, all measured in llama.cpp with the profile's
   ``runtime.gguf_type`` through the calibration's own measuring function; the predictor fitted on the
   first set is scored on the second (MAPE of decode and prefill, Kendall tau of decode).
3. **Search for the llama.cpp profile**, end to end: ``toolkit search`` with that predictor (its command
   is recorded), then every front member measured in llama.cpp against the parent: measured vs
   predicted speed-ups.

Measurements of parts 2 and 3 are cached per sub-network in ``--work`` (``measurements.json``, written
atomically after each one), so a killed run resumes; part 1 is re-timed on every run (it must be one run).

    python benchmarks/deploy.py --data-dir /work/shared/data   # the shipped llama.cpp profile of this machine

Goals: the toolkit's q8_0 decodes >= 0.95x llama.cpp's own q8_0, >= 5x PyTorch eager fp32 and >= 70 % of its
roofline; held-out decode MAPE <= 5 % and Kendall tau >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

GOALS = {"vs_llamacpp_own_q8_0": 0.95, "vs_torch_eager_fp32": 5.0, "roofline_fraction_q8_0": 0.70,
         "held_out_decode_mape_pct": 5.0, "held_out_kendall_tau": 0.9}


def gguf_bytes_per_token(path: Path, kv_bytes: float) -> float:
    """Bytes llama.cpp reads per generated token: every tensor as stored (the token table is the tied LM
    head; its one-row lookup is not counted twice), plus the KV cache."""
    from gguf import GGUFReader

    return float(sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)) + kv_bytes


def kv_cache_bytes(model, context: float, element_bytes: int) -> float:
    """K and V of every layer at ``context`` positions (read once per decode step)."""
    from toolkit.export.gguf import head_dim, layer_shapes

    return float(sum(2 * s["kv_heads"] * head_dim(model) * context * element_bytes for s in layer_shapes(model)))


def time_engines(args, loaded, profile, work: Path) -> dict[str, Any]:
    import torch

    from toolkit.engines.llamacpp import LlamaCpp, quantize
    from toolkit.export.gguf import source_gguf_of, write_gguf
    from toolkit.export.onnx import OrtCausalLM, export_onnx
    from toolkit.calibrate.latency import measure_model, ort_measure
    from toolkit.measure import torch_threads
    from toolkit.progress import progress_bar

    wl, threads, repeats = profile.workload, profile.runtime.threads, args.repeats
    T, N = wl.prompt_tokens, wl.generate_tokens
    ctx = T + (N - 1) / 2
    model = loaded.model
    bw = float(profile.memory.bandwidth_bytes_per_s)
    fp32_bytes = 4.0 * sum(p.numel() for p in model.parameters())  # tied embedding counted once
    src = source_gguf_of(loaded)
    import toolkit

    tag = f"{loaded.model_hash}-toolkit{toolkit.__version__}"  # a GGUF of another model or exporter is not reused
    files = {t: work / f"parent-{tag}-{t}.gguf" for t in ("f16", "q8_0", "q4_k_m")}
    out: dict[str, Any] = {}
    with progress_bar() as bar:
        task = bar.add_task("engines", total=9, info="GGUF export")
        for t, path in files.items():
            if not path.exists():
                write_gguf(model, path, gguf_type=t, source_gguf=src, tokenizer=loaded.tokenizer, threads=threads)
        own = work / f"llamacpp-own-{loaded.model_hash}-q8_0.gguf"
        if src is not None and not own.exists():
            quantize(src, own, "q8_0", threads, allow_requantize=True)
        bar.update(task, advance=1, info="torch eager fp32")
        with torch_threads(threads):
            m = measure_model(model, T, N, 1, repeats=repeats)
        out["torch_eager_fp32"] = {"decode_tokens_per_s": m.decode_tokens_per_s, "prefill_ms": m.prefill_ms,
                                   "bytes_per_token": fp32_bytes + kv_cache_bytes(model, ctx, 4), "spread": m.spread}
        bar.update(task, advance=1, info="onnxruntime")
        with tempfile.TemporaryDirectory(dir=work) as d:
            facts = export_onnx(model, Path(d))
            ort = OrtCausalLM(Path(d), facts["kv_heads"], facts["head_dim"], threads=threads)
            pre, dec, _ = ort_measure(ort, model.config.vocab_size, T, N, 1, repeats)
            del ort
        out["onnxruntime_fp32"] = {"decode_tokens_per_s": N / dec.median_s, "prefill_ms": pre.median_s * 1e3,
                                   "bytes_per_token": fp32_bytes + kv_cache_bytes(model, ctx, 4),
                                   "spread": {"decode_ms_per_token": dec.spread, "prefill_ms": pre.spread}}
        for t, path in files.items():
            bar.update(task, advance=1, info=f"llama.cpp {t}")
            with LlamaCpp(path, threads=threads, n_ctx=T + N + 8, logits_all=False) as lm:
                e = lm.measure(T, N, repeats)
            out[f"llamacpp_{t}"] = {"decode_tokens_per_s": e.decode_tokens_per_s, "prefill_ms": e.prefill_ms,
                                    "bytes_per_token": gguf_bytes_per_token(path, kv_cache_bytes(model, ctx, 2)),
                                    "file_bytes": path.stat().st_size, "spread": dict(e.spread)}
        # The toolkit's q8_0 against llama.cpp's own, alternately.
        ab: dict[str, list[float]] = {"toolkit": [], "own": []}
        if src is not None:
            for i in range(args.ab_rounds):
                for side, path in (("toolkit", files["q8_0"]), ("own", own)):
                    with LlamaCpp(path, threads=threads, n_ctx=T + N + 8, logits_all=False) as lm:
                        ab[side].append(lm.measure(T, N, repeats).decode_tokens_per_s)
                bar.update(task, info=f"q8_0 toolkit vs llama.cpp's own, round {i + 1}/{args.ab_rounds}")
            out["llamacpp_own_q8_0"] = {"decode_tokens_per_s": float(np.median(ab["own"])),
                                        "bytes_per_token": gguf_bytes_per_token(own, kv_cache_bytes(model, ctx, 2)),
                                        "file_bytes": own.stat().st_size, "source": src.name,
                                        "made_by": "llama_model_quantize(allow_requantize) on the source GGUF"}
        bar.update(task, completed=9)
    for rec in out.values():
        rec["roofline_tokens_per_s"] = bw / rec["bytes_per_token"]
        rec["roofline_fraction"] = rec["decode_tokens_per_s"] / rec["roofline_tokens_per_s"]
    ab_ratio = float(np.median(ab["toolkit"]) / np.median(ab["own"])) if ab["own"] else None
    same = _same_tensors(files["q8_0"], own) if src is not None else None
    torch_tps = out["torch_eager_fp32"]["decode_tokens_per_s"]
    return {"engines": out, "roofline_fraction": {k: v["roofline_fraction"] for k, v in out.items()},
            "bandwidth_bytes_per_s": bw, "q8_0_vs_llamacpp_own": {"ratio": ab_ratio, "rounds": ab,
                                                                  "identical_tensor_data": same},
            "speedup_vs_torch_eager_fp32": {k: v["decode_tokens_per_s"] / torch_tps for k, v in out.items()}}


def _same_tensors(a: Path, b: Path) -> bool:
    """Whether two GGUF files hold the same tensors, types and bytes (names matched)."""
    from gguf import GGUFReader

    ta = {t.name: t for t in GGUFReader(str(a)).tensors}
    tb = {t.name: t for t in GGUFReader(str(b)).tensors}
    return set(ta) == set(tb) and all(ta[n].tensor_type == tb[n].tensor_type and
                                      np.array_equal(np.asarray(ta[n].data), np.asarray(tb[n].data)) for n in ta)


class Cache:
    """Per-sub-network measurements in llama.cpp, kept across runs (keyed by model hash, engine, config)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = json.loads(path.read_text()) if path.exists() else {}

    def get_or_measure(self, key: str, fn):
        from toolkit.fileio import atomic_write_json

        if key not in self.data:
            self.data[key] = fn().to_dict()
            atomic_write_json(self.path, self.data)
        return self.data[key]


def predictor_part(args, loaded, profile, work: Path, cache: Cache) -> tuple[dict[str, Any], Any]:
    from toolkit.elastic import parent_shape, model_space
    from toolkit.importance import load_or_compute_importance
    from toolkit.calibrate.latency import subnet_measure_fn
    from toolkit.calibrate import Hardware, Measurement, Predictor, choose_calibration_configs
    from toolkit.progress import progress_bar
    from toolkit.fileio import default_calibration_file

    importance = load_or_compute_importance(loaded, default_calibration_file(None, args.data_dir))
    space = model_space(loaded, importance)
    shape = parent_shape(loaded.model)
    calib = choose_calibration_configs(space, args.calibration_samples, seed=args.seed)
    keys = {c.key() for c in calib}
    rng = np.random.default_rng(args.seed + 1)
    held = []
    while len(held) < args.held_out:
        c = space.sample(rng)
        if c.key() not in keys:
            keys.add(c.key())
            held.append(c)
    measure = subnet_measure_fn(loaded, importance, profile, args.repeats)
    tag = f"{loaded.model_hash}/{profile.runtime.engine}/{profile.runtime.gguf_type}/{profile.runtime.threads}"
    ms: dict[str, list] = {"calibration": [], "held_out": []}
    with progress_bar() as bar:
        task = bar.add_task("llama.cpp sub-networks", total=len(calib) + len(held), info="")
        for part, cfgs in (("calibration", calib), ("held_out", held)):
            for c in cfgs:
                d = cache.get_or_measure(f"{tag}/{c.key()}", lambda c=c: measure(c))
                ms[part].append(Measurement.from_dict(d, str(cache.path), "", shape))
                bar.update(task, advance=1, info=f"{part}: {ms[part][-1].decode_ms_per_token:.1f} ms/token")
    prior = Predictor.prior(loaded.model_hash, profile.name, profile.fingerprint, shape, Hardware.from_profile(profile),
                            profile.workload)
    fitted = prior.fit(ms["calibration"])
    fitted.save(work / "predictor.json")
    ev = fitted.evaluate(ms["held_out"])
    held_out = {"n": len(held), "decode_mape_pct": ev["decode_ms_per_token"]["mape_pct"],
                "prefill_mape_pct": ev["prefill_ms"]["mape_pct"],
                "kendall_tau": ev["decode_ms_per_token"]["kendall_tau"],
                "prefill_kendall_tau": ev["prefill_ms"]["kendall_tau"],
                "peak_mem_mape_pct": ev["peak_mem_bytes"]["mape_pct"]}
    pts = [{"config_key": m.config.key(), "measured_decode_ms": m.decode_ms_per_token,
            "predicted_decode_ms": fitted.predict(m.config)["decode_ms_per_token"], "measured_prefill_ms": m.prefill_ms,
            "predicted_prefill_ms": fitted.predict(m.config)["prefill_ms"], "params": shape.num_params(m.config)}
           for m in ms["held_out"]]
    return {"calibration_samples": len(calib), "cv": fitted.cv, "held_out": held_out, "held_out_points": pts,
            "coefficients": {k: list(v) for k, v in fitted.coefficients.items()}}, (importance, measure, tag)


def search_part(args, loaded, profile, work: Path, cache: Cache, ctx) -> dict[str, Any]:
    from toolkit.progress import progress_bar

    _, measure, tag = ctx
    out = work / "search"
    cmd = ["toolkit", "search", "--profile", args.profile, "--model", args.model, "--predictor",
           str(work / "predictor.json"), "--task", args.task, "--limit", str(args.limit), "--evals", str(args.evals),
           "--population", str(args.population), "--seed", str(args.seed), "--out", str(out), "--resume"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    bin_dir = Path(sys.executable).parent
    subprocess.run([str(bin_dir / cmd[0]), *cmd[1:]], check=True)
    from toolkit.elastic import parent_shape
    from toolkit.export.pareto import ParetoFront

    front = ParetoFront.read(out)
    full = parent_shape(loaded.model).full_config()
    rows = []
    with progress_bar() as bar:
        task = bar.add_task("front in llama.cpp", total=len(front.front) + 1, info="")
        p = cache.get_or_measure(f"{tag}/{full.key()}", lambda: measure(full))
        bar.advance(task)
        for m in front.front:
            d = cache.get_or_measure(f"{tag}/{m.config.key()}", lambda cfg=m.config: measure(cfg))
            met = dict(m.metrics)
            pred_tps = met.get("decode_tokens_per_s")
            rows.append({"config_key": m.config.key(), "accuracy": met.get("accuracy"), "params": met.get("params"),
                         "measured_decode_tokens_per_s": 1e3 / d["decode_ms_per_token"],
                         "predicted_decode_tokens_per_s": pred_tps,
                         "measured_speedup": p["decode_ms_per_token"] / d["decode_ms_per_token"]})
            bar.advance(task)
    pparent = (front.parent.metrics.get("decode_tokens_per_s") if front.parent is not None else None)
    for r in rows:
        r["predicted_speedup"] = (r["predicted_decode_tokens_per_s"] / pparent
                                  if pparent and r["predicted_decode_tokens_per_s"] else None)
    return {"command": " ".join(shlex.quote(c) for c in cmd), "parent_decode_tokens_per_s": 1e3 / p["decode_ms_per_token"],
            "front": rows}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    eng = result["engines"]
    names = list(eng)
    tps = [eng[n]["decode_tokens_per_s"] for n in names]
    roof = [eng[n]["roofline_tokens_per_s"] for n in names]
    x = np.arange(len(names))
    a.bar(x - 0.2, tps, 0.4, label="measured")
    a.bar(x + 0.2, roof, 0.4, label="bandwidth roofline", alpha=0.5)
    a.set_xticks(x, [n.replace("_", "\n", 1) for n in names], fontsize=8)
    a.set_ylabel("decode tokens/s")
    a.set_title("parent, one run, same threads and workload")
    a.legend()
    if result.get("predictor"):
        pts = result["predictor"]["held_out_points"]
        mx = [p["measured_decode_ms"] for p in pts]
        pr = [p["predicted_decode_ms"] for p in pts]
        b.scatter(mx, pr, s=14)
        lo, hi = min(mx + pr), max(mx + pr)
        b.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        h = result["predictor"]["held_out"]
        b.set_title(f"held-out sub-networks in llama.cpp: MAPE {h['decode_mape_pct']:.1f} %, tau {h['kendall_tau']:.2f}")
        b.set_xlabel("measured decode ms/token")
        b.set_ylabel("predicted decode ms/token")
    fig.suptitle(f"{result['profile']} (fingerprint {result['machine_fingerprint']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default=None,
                   help="a llama.cpp profile of this machine (default: the shipped one whose fingerprint matches)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--work", default="/work/deploy", help="folder for GGUF files, the measurement cache and the search")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ab-rounds", type=int, default=3, help="alternating rounds of the toolkit's vs llama.cpp's q8_0")
    p.add_argument("--calibration-samples", type=int, default=20)
    p.add_argument("--held-out", type=int, default=16)
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--evals", type=int, default=24)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="engines,predictor,search")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--results-dir", default=str(_common.RESULTS))
    args = p.parse_args(argv)

    from toolkit.engines import installed, require
    from toolkit.models import load_model
    from toolkit.profiles import load_profile

    from toolkit.profiles import profile_for_this_machine

    profile = load_profile(args.profile) if args.profile else profile_for_this_machine("llama.cpp")
    args.profile = args.profile or profile.name
    if profile.runtime.engine != "llama.cpp":
        p.error(f"--profile: {args.profile} runs engine {profile.runtime.engine!r}, not llama.cpp")
    require("llama.cpp", "--profile")
    parts = set(args.parts.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model)
    cache = Cache(work / "measurements.json")
    result: dict[str, Any] = {"profile": profile.name, "machine_fingerprint": profile.fingerprint,
                              "profile_matches_machine": profile.matches_current_machine(),
                              "engines_installed": installed(), "model": args.model, "model_hash": loaded.model_hash,
                              "threads": profile.runtime.threads, "gguf_type": profile.runtime.gguf_type,
                              "workload": {"prompt_tokens": profile.workload.prompt_tokens,
                                           "generate_tokens": profile.workload.generate_tokens}}
    if "engines" in parts:
        result.update(time_engines(args, loaded, profile, work))
    ctx = None
    if "predictor" in parts or "search" in parts:
        result["predictor"], ctx = predictor_part(args, loaded, profile, work, cache)
    if "search" in parts:
        result["search"] = search_part(args, loaded, profile, work, cache, ctx)
    goals = []
    if "engines" in result:
        q8, ab = result["engines"]["llamacpp_q8_0"], result["q8_0_vs_llamacpp_own"]["ratio"]
        torch_x = result["speedup_vs_torch_eager_fp32"]["llamacpp_q8_0"]
        goals += [{"goal": "toolkit q8_0 >= 0.95x llama.cpp's own q8_0", "measured": ab,
                   "reached": ab is not None and ab >= GOALS["vs_llamacpp_own_q8_0"]},
                  {"goal": "q8_0 >= 5x torch eager fp32", "measured": torch_x, "reached": torch_x >= 5.0},
                  {"goal": "q8_0 >= 70 % of its roofline", "measured": q8["roofline_fraction"],
                   "reached": q8["roofline_fraction"] >= 0.70}]
    if result.get("predictor"):
        h = result["predictor"]["held_out"]
        goals += [{"goal": "held-out decode MAPE <= 5 %", "measured": h["decode_mape_pct"],
                   "reached": h["decode_mape_pct"] <= 5.0},
                  {"goal": "held-out Kendall tau >= 0.9", "measured": h["kendall_tau"], "reached": h["kendall_tau"] >= 0.9}]
    result["goals"] = goals
    results_dir = Path(args.results_dir)
    path = _common.write("deploy", result, results_dir)
    if "engines" in result:
        plot(result, results_dir / "deploy.png")
    print(json.dumps({"goals": goals, "roofline_fraction": result.get("roofline_fraction"),
                      "held_out": (result.get("predictor") or {}).get("held_out")}, indent=2))
    print("->", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
