"""Stage 4: export a chosen sub-network as a Hugging Face folder, ONNX (onnxruntime) or GPTQ 4-bit.

Each format goes to ``OUT/<format>/``, written in a temporary sibling folder and renamed only when the
export and its checks succeeded: an interrupted export leaves nothing behind. Every artifact carries a
``manifest.json`` (see :mod:`toolkit.export.manifest`) with the reference outputs ``toolkit verify``
re-checks.

Checks at export time, each in the format's stock runtime:

* ``hf``: reloaded with stock ``transformers.AutoModelForCausalLM`` (``trust_remote_code=True`` only for
  heterogeneous sub-networks, whose folder ships the small modeling file); logits parity and equal
  greedy generation.
* ``onnx``: onnxruntime CPU provider; max |logit diff| on fixed prompts (prefill) and greedy generation
  with the KV cache equal to PyTorch's for 32 tokens; decode tokens/s vs PyTorch eager.
* ``gptq``: GPTQModel 4-bit (:mod:`toolkit.export.gptq`); perplexity (and task accuracy when a task is
  given) before and after quantization.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from toolkit.errors import UserError
from toolkit.export.manifest import REFERENCE_PROMPT, Manifest, check_files

FORMATS = ("hf", "onnx", "gptq")
PARITY_PROMPTS = (REFERENCE_PROMPT, "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"",
                  "Question: Which gas do plants absorb from the air?\nAnswer:")
GREEDY_TOKENS = 32


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What to export and how to check it."""

    formats: tuple[str, ...]
    out: Path
    threads: int | None = None
    prompt_tokens: int = 128
    generate_tokens: int = 32
    repeats: int = 5
    gptq_bits: int = 4
    gptq_group_size: int = 64  # divides every width of a 64-grid sub-network; SmolLM2 hidden 576 rejects 128
    gptq_samples: int = 32
    calibration_file: Path | None = None
    perplexity_file: Path | None = None
    perplexity_tokens: int = 4096
    task_data: Any = None  # toolkit.tasks.TaskData for accuracy before/after
    task_limit: int | None = 200
    overwrite: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise UserError(f"--format: unknown format {bad[0] if bad else '(none)'!r}; choose from {', '.join(FORMATS)}")


def reference_outputs(model, tokenizer, prompt: str = REFERENCE_PROMPT, tokens: int = 16) -> dict[str, Any]:
    """Logits (first 64 of the last position) and greedy continuation of a fixed prompt."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1, :64].float()
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return {"prompt": prompt, "input_ids": ids[0].tolist(), "logits_last": [round(float(x), 6) for x in logits],
            "greedy_ids": out[0, ids.shape[1]:].tolist()}


def _max_logit_diff(model_a, run_b, tokenizer, prompts: Sequence[str]) -> float:
    import numpy as np
    import torch

    worst = 0.0
    for p in prompts:
        ids = tokenizer(p, return_tensors="pt").input_ids
        with torch.inference_mode():
            a = model_a(input_ids=ids).logits.float().numpy()
        b = run_b(ids.numpy())
        worst = max(worst, float(np.abs(a - b).max()))
    return worst


def _pytorch_decode(model, req: ExportRequest):
    from toolkit.latency import measure_model
    from toolkit.measure import torch_threads

    with torch_threads(req.threads):
        return measure_model(model, req.prompt_tokens, req.generate_tokens, 1, repeats=req.repeats)


def _quality(model, tokenizer, req: ExportRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if req.perplexity_file is not None:
        from toolkit.evaluate import perplexity

        r = perplexity(model, tokenizer, req.perplexity_file, window=512, max_tokens=req.perplexity_tokens)
        out["perplexity"] = {"file": Path(req.perplexity_file).name, "tokens": r.tokens_scored, "value": r.perplexity}
    if req.task_data is not None:
        from toolkit.evaluate import evaluate_task

        r = evaluate_task(model, tokenizer, req.task_data, limit=req.task_limit, seed=0, progress=False)
        out["task"] = {"name": r.task, "n": r.n, "acc": r.acc, "acc_stderr": r.acc_stderr, "acc_norm": r.acc_norm}
    return out


def export_subnet(child, tokenizer, req: ExportRequest, source: Mapping[str, Any], subnet: Mapping[str, Any] | None,
                  profile: Mapping[str, Any] | None = None, predicted: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Export the extracted sub-network ``child`` in every requested format; returns format -> folder."""
    from toolkit.fileio import atomic_directory

    req.out.mkdir(parents=True, exist_ok=True)
    for fmt in req.formats:
        if (req.out / fmt).exists() and not req.overwrite:
            raise UserError(f"{req.out / fmt}: exists; pass --overwrite or choose another --out")
    done: dict[str, Path] = {}
    base = {"source": dict(source), "subnet": subnet, "profile": profile}
    pt_ref = reference_outputs(child, tokenizer)
    pt_speed = None
    if any(f in req.formats for f in ("hf", "onnx")):
        pt_speed = _pytorch_decode(child, req)
    fp_quality = _quality(child, tokenizer, req) if "gptq" in req.formats else {}
    for fmt in req.formats:
        with atomic_directory(req.out / fmt, overwrite=req.overwrite) as tmp:
            _hook("TOOLKIT_EXPORT_TEST_SLEEP")
            if fmt == "hf":
                m = _export_hf(child, tokenizer, tmp, subnet, source, pt_ref, pt_speed, predicted)
            elif fmt == "onnx":
                m = _export_onnx(child, tokenizer, tmp, req, pt_ref, pt_speed, predicted)
            else:
                m = _export_gptq(child, tokenizer, tmp, req, subnet, source, fp_quality, predicted, done.get("hf"))
            m.source, m.subnet, m.profile = base["source"], base["subnet"], base["profile"]
            m.write(tmp)
        done[fmt] = req.out / fmt
    return done


def _hook(var: str) -> None:
    """Test hook: sleep inside the export (so a test can kill the process mid-way)."""
    if os.environ.get(var):
        time.sleep(float(os.environ[var]))


def _throughput(measured_tps: float | None, predicted: Mapping[str, Any] | None, **extra) -> dict[str, Any]:
    return {"measured_decode_tokens_per_s": measured_tps,
            "predicted_decode_tokens_per_s": (predicted or {}).get("decode_tokens_per_s"),
            "predicted_prefill_ms": (predicted or {}).get("prefill_ms"),
            "predicted_peak_mem_bytes": (predicted or {}).get("peak_mem_bytes"), **extra}


def _export_hf(child, tokenizer, tmp: Path, subnet, source, pt_ref, pt_speed, predicted) -> Manifest:
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.elastic import write_subnet
    from toolkit.space import SubnetConfig

    cfg = SubnetConfig.from_dict(subnet) if subnet else None
    write_subnet(child, tmp, tokenizer, cfg, source.get("model_hash"))
    hetero = child.config.model_type == "elastic_llama"
    stock = AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=hetero, dtype=torch.float32).eval()
    ref = reference_outputs(stock, tokenizer)
    diff = max(abs(a - b) for a, b in zip(ref["logits_last"], pt_ref["logits_last"]))
    if ref["greedy_ids"] != pt_ref["greedy_ids"] or diff > 1e-3:
        raise RuntimeError(f"hf export: reloaded model disagrees with PyTorch (max |logit diff| {diff:.2e})")
    return Manifest(format="hf", source={}, subnet=None, profile=None, reference=ref,
                    parity={"reloaded_by": "transformers.AutoModelForCausalLM" + (" (trust_remote_code)" if hetero else ""),
                            "max_abs_logit_diff": diff, "greedy_equal": True},
                    throughput=_throughput(pt_speed.decode_tokens_per_s, predicted, runtime="pytorch eager",
                                           measured_prefill_ms=pt_speed.prefill_ms),
                    details={"heterogeneous": hetero, "trust_remote_code_needed": hetero})


def _export_onnx(child, tokenizer, tmp: Path, req: ExportRequest, pt_ref, pt_speed, predicted) -> Manifest:
    import numpy as np
    import torch

    from toolkit.export.onnx import OrtCausalLM, export_onnx

    facts = export_onnx(child, tmp)
    tokenizer.save_pretrained(tmp)
    child.config.save_pretrained(tmp)
    ort_lm = OrtCausalLM(tmp, facts["kv_heads"], facts["head_dim"], threads=req.threads)
    diff = _max_logit_diff(child, lambda ids: ort_lm.forward(ids, ort_lm.empty_past(ids.shape[0]))[0], tokenizer,
                           PARITY_PROMPTS)
    ids = tokenizer(REFERENCE_PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        pt_gen = child.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    ort_gen = ort_lm.generate(ids.numpy(), GREEDY_TOKENS)
    greedy_equal = bool(np.array_equal(pt_gen.numpy(), ort_gen))
    if diff > 1e-3 or not greedy_equal:
        raise RuntimeError(f"onnx export: onnxruntime disagrees with PyTorch (max |logit diff| {diff:.2e}, greedy equal {greedy_equal})")
    ms, spread = ort_lm.decode_ms_per_token(req.prompt_tokens, req.generate_tokens, req.repeats, child.config.vocab_size)
    logits, _ = ort_lm.forward(ids.numpy(), ort_lm.empty_past(1))
    ref = dict(pt_ref, logits_last=[round(float(x), 6) for x in logits[0, -1, :64]],
               greedy_ids=ort_gen[0, ids.shape[1]:ids.shape[1] + 16].tolist())
    ort_tps = 1e3 / ms
    return Manifest(format="onnx", source={}, subnet=None, profile=None, reference=ref,
                    parity={"runtime": "onnxruntime CPUExecutionProvider", "prompts": len(PARITY_PROMPTS),
                            "max_abs_logit_diff": diff, "greedy_tokens": GREEDY_TOKENS, "greedy_equal": greedy_equal},
                    throughput=_throughput(ort_tps, predicted, runtime="onnxruntime", spread=spread,
                                           pytorch_eager_decode_tokens_per_s=pt_speed.decode_tokens_per_s,
                                           speedup_vs_pytorch_eager=ort_tps / pt_speed.decode_tokens_per_s),
                    details=facts)


def _export_gptq(child, tokenizer, tmp: Path, req: ExportRequest, subnet, source, fp_quality, predicted,
                 hf_folder: Path | None) -> Manifest:
    import tempfile

    from toolkit.elastic import write_subnet
    from toolkit.export.gptq import export_gptq, load_gptq
    from toolkit.space import SubnetConfig

    if req.calibration_file is None:
        raise UserError("--calibration: GPTQ needs calibration text (default: <data-dir>/calibration/calibration.txt)")
    with tempfile.TemporaryDirectory(dir=req.out) as scratch:
        src = hf_folder
        if src is None:  # GPTQ quantizes an HF folder: write a temporary one
            src = Path(scratch) / "hf"
            src.mkdir()
            write_subnet(child, src, tokenizer, SubnetConfig.from_dict(subnet) if subnet else None, source.get("model_hash"))
        facts = export_gptq(src, tmp, bits=req.gptq_bits, group_size=req.gptq_group_size,
                            calibration_file=req.calibration_file, num_samples=req.gptq_samples)
        fp_bytes = sum(p.stat().st_size for p in Path(src).glob("*.safetensors"))
    qmodel, qtok = load_gptq(tmp)
    ref = reference_outputs(qmodel, qtok)
    q_quality = _quality(qmodel, qtok, req)
    q_bytes = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    speed = _pytorch_decode(qmodel, req)
    return Manifest(format="gptq", source={}, subnet=None, profile=None, reference=ref,
                    accuracy={"before": fp_quality, "after": q_quality},
                    throughput=_throughput(speed.decode_tokens_per_s, predicted, runtime="gptqmodel (CPU)"),
                    details={**facts, "weights_bytes": q_bytes, "fp32_weights_bytes": fp_bytes,
                             "size_ratio_vs_fp32": fp_bytes / q_bytes, "size_ratio_vs_fp16": fp_bytes / 2 / q_bytes})


# -- verify ----------------------------------------------------------------------------------------
def verify(folder: Path, threads: int | None = None) -> dict[str, Any]:
    """Re-hash an artifact's files and re-run it against its manifest's reference. Raises on failure."""
    folder = Path(folder)
    m = Manifest.read(folder)
    problems = check_files(folder, m)
    if problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    ref = m.reference
    if m.format == "onnx":
        import numpy as np

        from toolkit.export.onnx import OrtCausalLM

        lm = OrtCausalLM.from_artifact(folder, threads)
        ids = np.array([ref["input_ids"]])
        logits, _ = lm.forward(ids, lm.empty_past(1))
        got = {"logits_last": logits[0, -1, :64].tolist(),
               "greedy_ids": lm.generate(ids, len(ref["greedy_ids"]))[0, ids.shape[1]:].tolist()}
    else:
        import torch

        if m.format == "gptq":
            from toolkit.export.gptq import load_gptq

            model, tok = load_gptq(folder)
        else:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            # Hashes were checked above, so the modeling file that runs is the one that was exported.
            remote = bool(m.details.get("heterogeneous", False))
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=remote, dtype=torch.float32).eval()
            tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
        got = reference_outputs(model, tok, ref["prompt"], len(ref["greedy_ids"]))
    diff = max(abs(a - b) for a, b in zip(got["logits_last"], ref["logits_last"]))
    tol = 1e-3
    if diff > tol or got["greedy_ids"] != ref["greedy_ids"]:
        raise UserError(f"{folder}: parity: outputs differ from the manifest's reference (max |logit diff| {diff:.2e})")
    return {"folder": str(folder), "format": m.format, "files": len(m.files), "max_abs_logit_diff": diff, "ok": True}
