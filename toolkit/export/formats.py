"""One step per format: write the artifact into a folder, check it, measure it, and return its manifest.

:func:`toolkit.export.run.export_subnet` calls :func:`build_hf`, :func:`build_onnx`, :func:`build_gptq` or
:func:`build_gguf` inside the format's temporary folder; each returns a :class:`~toolkit.export.manifest.Manifest`
without ``source``, ``subnet`` and ``profile`` (the caller fills those in and writes it). The writers are the
format modules (:mod:`~toolkit.export.hf` via :func:`toolkit.elastic.write_subnet`, :mod:`~toolkit.export.onnx`,
:mod:`~toolkit.export.gptq`, :mod:`~toolkit.export.gguf`); the checks are those of :mod:`toolkit.export`'s
docstring. The PyTorch measurements every format compares against (decode speed, perplexity and task
accuracy) are :func:`pytorch_decode` and :func:`pytorch_quality`, made once per export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from toolkit.errors import UserError
from toolkit.export.manifest import Manifest
from toolkit.export.parity import PARITY_PROMPTS, REFERENCE_PROMPT
from toolkit.export.request import GPTQ_SCRATCH, ExportRequest

TOKENIZER_PROBE = "In 2024, 3.14159 x 1000 = 3141.59; it's   done!\n\tÜber naïve café"  # digits, spaces, accents
GGUF_MAX_PERPLEXITY_RATIO = 2.0  # a quantized GGUF whose perplexity more than doubles is refused as broken


# -- what every format is compared with ------------------------------------------------------------
def pytorch_decode(model, req: ExportRequest):
    """PyTorch eager prefill and decode speed of ``model`` on the request's workload and threads."""
    from toolkit.calibrate.latency import measure_model
    from toolkit.measure import torch_threads

    with torch_threads(req.threads):
        return measure_model(model, req.prompt_tokens, req.generate_tokens, 1, repeats=req.repeats)


def pytorch_quality(model, tokenizer, req: ExportRequest) -> dict[str, Any]:
    """Perplexity on ``req.perplexity_file`` (windows of 512 tokens) and accuracy on ``req.task_data``,
    each only where the request names it."""
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


def _throughput(measured_tps: float | None, predicted: Mapping[str, Any] | None, **extra) -> dict[str, Any]:
    return {"measured_decode_tokens_per_s": measured_tps,
            "predicted_decode_tokens_per_s": (predicted or {}).get("decode_tokens_per_s"),
            "predicted_prefill_ms": (predicted or {}).get("prefill_ms"),
            "predicted_peak_mem_bytes": (predicted or {}).get("peak_mem_bytes"), **extra}


# -- the formats ------------------------------------------------------------------------------
def build_hf(child, tokenizer, tmp: Path, subnet, source, refs, pt_speed, predicted) -> Manifest:
    from toolkit.elastic import write_subnet
    from toolkit.export.hf import load_hf
    from toolkit.export.parity import check, check_tokenizer, merge, torch_logits
    from toolkit.space import SubnetConfig

    cfg = SubnetConfig.from_dict(subnet) if subnet else None
    write_subnet(child, tmp, tokenizer, cfg, source.get("model_hash"))
    hetero = child.config.model_type == "elastic_llama"
    reloaded, tok = load_hf(tmp)  # the toolkit's own classes: the check runs no code from the folder
    check_tokenizer(tok, refs[0], "hf export")
    results = [check(r, torch_logits(reloaded, r.sequence), "hf export") for r in refs]
    cls = type(reloaded)
    return Manifest(format="hf", source={}, subnet=None, profile=None, reference=refs[0].to_dict(),
                    parity={**merge(results), "reloaded_by": f"{cls.__module__}.{cls.__name__} (trust_remote_code off)",
                            "greedy_equal": True},
                    throughput=_throughput(pt_speed.decode_tokens_per_s, predicted, runtime="pytorch eager",
                                           measured_prefill_ms=pt_speed.prefill_ms),
                    details={"heterogeneous": hetero, "trust_remote_code_needed": False,
                             "stock_transformers_needs_trust_remote_code": hetero})


def build_onnx(child, tokenizer, tmp: Path, req: ExportRequest, refs, pt_speed, predicted) -> Manifest:
    from toolkit.export.onnx import OrtCausalLM, export_onnx
    from toolkit.export.parity import CONTINUATION_TOKENS, check, merge

    details = export_onnx(child, tmp)
    tokenizer.save_pretrained(tmp)
    child.config.save_pretrained(tmp)
    ort_lm = OrtCausalLM(tmp, details["kv_heads"], details["head_dim"], threads=req.threads)
    results = [check(r, ort_lm.teacher_forced_logits(r.sequence, len(r.prompt_ids)), "onnx export") for r in refs]
    ms, spread = ort_lm.decode_ms_per_token(req.prompt_tokens, req.generate_tokens, req.repeats, child.config.vocab_size)
    ort_tps = 1e3 / ms
    return Manifest(format="onnx", source={}, subnet=None, profile=None, reference=refs[0].to_dict(),
                    parity={"runtime": "onnxruntime CPUExecutionProvider", **merge(results),
                            "greedy_tokens": CONTINUATION_TOKENS, "greedy_equal": True},
                    throughput=_throughput(ort_tps, predicted, runtime="onnxruntime", spread=spread,
                                           pytorch_eager_decode_tokens_per_s=pt_speed.decode_tokens_per_s,
                                           speedup_vs_pytorch_eager=ort_tps / pt_speed.decode_tokens_per_s),
                    details=details)


def build_gptq(child, tokenizer, tmp: Path, req: ExportRequest, subnet, source, fp_quality, predicted,
               hf_folder: Path | None) -> Manifest:
    import tempfile

    from toolkit.elastic import write_subnet
    from toolkit.export.gptq import export_gptq, load_gptq
    from toolkit.export.parity import make_reference
    from toolkit.space import SubnetConfig

    # GPTQ quantizes an HF folder: the hf export's, else a temporary one (swept by clean_stale if killed)
    with tempfile.TemporaryDirectory(dir=req.out, prefix=f".{GPTQ_SCRATCH}.", suffix=".tmp") as scratch:
        src = hf_folder
        if src is None:
            src = Path(scratch) / "hf"
            src.mkdir()
            write_subnet(child, src, tokenizer, SubnetConfig.from_dict(subnet) if subnet else None, source.get("model_hash"))
        details = export_gptq(src, tmp, bits=req.gptq_bits, group_size=req.gptq_group_size,
                            calibration_file=req.calibration_file, num_samples=req.gptq_samples)
        fp_bytes = sum(p.stat().st_size for p in Path(src).glob("*.safetensors"))
    qmodel, qtok = load_gptq(tmp)
    ref = make_reference(qmodel, qtok, REFERENCE_PROMPT)
    q_quality = pytorch_quality(qmodel, qtok, req)
    q_bytes = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    speed = pytorch_decode(qmodel, req)
    return Manifest(format="gptq", source={}, subnet=None, profile=None, reference=ref.to_dict(),
                    parity={"method": "teacher-forced",
                            "reference_from": "the quantized model as toolkit.export.gptq.load_gptq loads it "
                                              "(4-bit logits differ from fp32 by design: see accuracy)"},
                    accuracy={"before": fp_quality, "after": q_quality},
                    throughput=_throughput(speed.decode_tokens_per_s, predicted, runtime="gptqmodel (CPU)"),
                    details={**details, "weights_bytes": q_bytes, "fp32_weights_bytes": fp_bytes,
                             "size_ratio_vs_fp32": fp_bytes / q_bytes, "size_ratio_vs_fp16": fp_bytes / 2 / q_bytes})


def _gguf_reference_model(child, gguf_type: str):
    """The PyTorch model a float GGUF is checked against: the child itself (f32), or a copy with its weights
    rounded to f16 / bf16 (the file's weights), so the check measures llama.cpp, not the rounding."""
    if gguf_type == "f32":
        return child
    import copy

    import torch

    dt = torch.float16 if gguf_type == "f16" else torch.bfloat16
    rounded = copy.deepcopy(child)
    with torch.no_grad():
        for p in rounded.parameters():
            if p.ndim == 2:
                p.copy_(p.to(dt).to(p.dtype))
    return rounded


def _llama_reference(lm, prompt_ids, prompt: str):
    """A quantized GGUF's own reference: llama.cpp's greedy continuation and its top-k logits."""
    from toolkit.export.parity import CONTINUATION_TOKENS, TOP_K, Reference

    cont = lm.greedy(prompt_ids, CONTINUATION_TOKENS)
    logits = lm.logits([*prompt_ids, *cont])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :TOP_K]
    vals = np.take_along_axis(logits, top, axis=1)
    return Reference(prompt=prompt, prompt_ids=tuple(prompt_ids), continuation_ids=tuple(cont),
                     topk_ids=tuple(tuple(int(i) for i in r) for r in top),
                     topk_logits=tuple(tuple(round(float(x), 6) for x in r) for r in vals))


def build_gguf(child, tokenizer, tmp: Path, req: ExportRequest, refs, pt_speed, fp_quality, predicted) -> Manifest:
    from toolkit.engines.llamacpp import LlamaCpp, gguf_type
    from toolkit.export.gguf import GGUF_FILE, gguf_tolerance, write_gguf
    from toolkit.export.parity import check, make_reference, merge

    t = gguf_type(req.gguf_type)
    details = write_gguf(child, tmp / GGUF_FILE, gguf_type=t.name, tokenizer=tokenizer, source_gguf=req.source_gguf,
                       threads=req.threads)
    tol = gguf_tolerance(t.name)
    with LlamaCpp(tmp / GGUF_FILE, threads=req.threads, n_ctx=256, kv_f32=True) as lm:
        if t.quantized:
            ref_ids = [list(tokenizer(p)["input_ids"]) for p in PARITY_PROMPTS]
            own = [_llama_reference(lm, ids, p) for ids, p in zip(ref_ids, PARITY_PROMPTS)]
            # The reference verify re-checks: it proves the file is unchanged and llama.cpp reproduces it, not that
            # the quantization is good. That is the perplexity guard below (and the recorded task accuracy).
            results = [check(r, lm.logits(r.sequence), "gguf export", tol) for r in own]
            reference, method = own[0], "llama.cpp's own output (quantized weights differ from fp32 by design)"
            quality = {"before": fp_quality, "after": _llama_quality(tmp / GGUF_FILE, tokenizer, req)}
            _check_quantized_perplexity(quality, t.name)
        else:
            base = _gguf_reference_model(child, t.name)
            gref = refs if t.name == "f32" and refs else [make_reference(base, tokenizer, p) for p in PARITY_PROMPTS]
            results = [check(r, lm.logits(r.sequence), "gguf export", tol) for r in gref]
            reference = gref[0]
            method = "PyTorch" if t.name == "f32" else f"PyTorch with the weights rounded to {t.name}"
            quality = {}
        for text in (*PARITY_PROMPTS, TOKENIZER_PROBE):
            if lm.tokenize(text) != list(tokenizer(text, add_special_tokens=False)["input_ids"]):
                raise UserError(f"gguf export: tokenizer: llama.cpp encodes {text!r} differently from the Hugging "
                                f"Face tokenizer (tokenizer.ggml.pre {details['tokenizer'].get('pre')!r})")
    with LlamaCpp(tmp / GGUF_FILE, threads=req.threads, n_ctx=req.prompt_tokens + req.generate_tokens + 8,
                  logits_all=False) as lm:
        speed = lm.measure(req.prompt_tokens, req.generate_tokens, req.repeats)
    fp32_bytes = 4 * sum(p.numel() for p in child.parameters())  # a tied LM head is counted once
    return Manifest(format="gguf", source={}, subnet=None, profile=None, reference=reference.to_dict(),
                    parity={"runtime": "llama.cpp (f32 KV cache)", "reference_from": method, **merge(results),
                            "greedy_equal": not t.quantized or None, "tokenizer_equal": True},
                    accuracy=quality,
                    throughput=_throughput(speed.decode_tokens_per_s, predicted, runtime=f"llama.cpp {t.name}",
                                           measured_prefill_ms=speed.prefill_ms, spread=dict(speed.spread),
                                           pytorch_eager_decode_tokens_per_s=pt_speed.decode_tokens_per_s,
                                           speedup_vs_pytorch_eager=speed.decode_tokens_per_s / pt_speed.decode_tokens_per_s),
                    details={**details, "fp32_bytes": fp32_bytes, "size_ratio_vs_fp32": fp32_bytes / details["bytes"]})


def _check_quantized_perplexity(quality: Mapping[str, Any], type_name: str) -> None:
    before = quality.get("before", {}).get("perplexity", {}).get("value")
    after = quality.get("after", {}).get("perplexity", {}).get("value")
    if before and after and after > GGUF_MAX_PERPLEXITY_RATIO * before:
        raise UserError(f"gguf export: {type_name}: perplexity {before:.2f} -> {after:.2f} in llama.cpp, more than "
                        f"{GGUF_MAX_PERPLEXITY_RATIO:g}x the fp32 sub-network's; the quantized file is not usable")


def _llama_quality(path: Path, tokenizer, req: ExportRequest) -> dict[str, Any]:
    """Perplexity (and task accuracy) of the GGUF in llama.cpp, as :func:`pytorch_quality` measures PyTorch's
    (windows of 512 tokens, the same text and token budget)."""
    from toolkit.engines.llamacpp import LlamaCpp, perplexity

    out: dict[str, Any] = {}
    if req.perplexity_file is not None:
        ids = list(tokenizer(Path(req.perplexity_file).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
        with LlamaCpp(path, threads=req.threads, n_ctx=512, kv_f32=True) as lm:
            r = perplexity(lm, ids, window=512, max_tokens=req.perplexity_tokens)
        out["perplexity"] = {"file": Path(req.perplexity_file).name, **r}
    if req.task_data is not None:
        from toolkit.evaluate import LlamaCppScorer, evaluate_task

        r = evaluate_task(LlamaCppScorer(path, threads=req.threads), tokenizer, req.task_data, limit=req.task_limit,
                          seed=0, progress=False)
        out["task"] = {"name": r.task, "n": r.n, "acc": r.acc, "acc_stderr": r.acc_stderr, "acc_norm": r.acc_norm}
    return out
