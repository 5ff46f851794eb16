"""Stage 4: export a chosen sub-network as a Hugging Face folder, ONNX (onnxruntime), GPTQ 4-bit or GGUF (llama.cpp).

Each format goes to ``OUT/<format>/``, written in a temporary sibling folder and renamed only when the
export and its checks succeeded: an interrupted export leaves nothing visible behind, and what it left
hidden (temporary folders) is removed when the next export into ``OUT`` starts. With ``resume`` a format
whose folder already verifies (manifest readable, every file's hash as recorded, same sub-network and
source model) is kept instead of exported again. Every artifact carries a ``manifest.json`` (see
:mod:`toolkit.export.manifest`) with the reference ``toolkit verify`` re-checks.

Checks at export time, each the teacher-forced parity of :mod:`toolkit.export.parity` (the artifact's
logits on PyTorch's prompt + greedy continuation, at every position) on three fixed prompts:

* ``hf``: reloaded with the toolkit's own classes (:mod:`toolkit.export.hf`; no code from the folder runs).
* ``onnx``: onnxruntime CPU provider, prefill then one cached decode step per token; decode tokens/s vs
  PyTorch eager.
* ``gptq``: GPTQModel 4-bit (:mod:`toolkit.export.gptq`); 4-bit logits differ from fp32 by design, so its
  check is perplexity (and task accuracy when a task is given) before and after quantization, and its
  reference is the quantized model's own (what ``verify`` re-checks later).
* ``gguf``: llama.cpp (:mod:`toolkit.export.gguf`, run by :mod:`toolkit.engines.llamacpp` with an f32 KV
  cache for the checks). f32 and f16 files are checked against PyTorch's reference (f16 against the
  sub-network with its weights rounded to f16, at :data:`GGUF_F16_TOLERANCE`: llama.cpp also rounds
  activations to f16 inside f16 matmuls); quantized types (q8_0, q4_k_m, ...) differ by design, so like
  GPTQ their reference is llama.cpp's own output and their check is size on disk and perplexity (and task
  accuracy) before and after. Decode tokens/s and prefill ms are measured in llama.cpp.

A parity failure is a :class:`~toolkit.export.parity.ParityError`: one line, exit code 2, no artifact.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.export.manifest import FORMATS, REFERENCE_PROMPT, Manifest, check_files

PARITY_PROMPTS = (REFERENCE_PROMPT, "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"",
                  "Question: Which gas do plants absorb from the air?\nAnswer:")
TOKENIZER_PROBE = "In 2024, 3.14159 x 1000 = 3141.59; it's   done!\n\tÜber naïve café"  # digits, spaces, accents
GGUF_F16_TOLERANCE = 2e-2  # max |logit diff| of an f16 GGUF vs PyTorch with f16-rounded weights
GGUF_QUANT_TOLERANCE = 5e-3  # a quantized GGUF vs its own reference (llama.cpp's SIMD paths differ by host)
GPTQ_SCRATCH = "gptq-source"  # OUT/.gptq-source.*.tmp: the temporary HF folder GPTQ quantizes without --format hf


def parse_formats(text: str) -> tuple[str, ...]:
    """``"hf,onnx"`` -> ("hf", "onnx"); an unknown, repeated or missing format is a UserError."""
    formats = tuple(f.strip() for f in str(text).split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format: unknown format {bad[0] if bad else '(none)'!r}; choose from {', '.join(FORMATS)}")
    if len(set(formats)) != len(formats):
        raise UserError(f"--format: {text!r} names a format twice")
    return formats


def _check_int(value: Any, flag: str, low: int, allow: tuple[int, ...] = (), optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (value < low and value not in allow):
        also = f" or {', '.join(map(str, allow))}" if allow else ""
        raise UserError(f"{flag}: must be an integer >= {low}{also}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ExportRequest:
    """What to export and how to check it (validated on construction, before any model is loaded)."""

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
    resume: bool = False
    gguf_type: str = "f16"
    source_gguf: Path | None = None  # the parent's GGUF, whose tokenizer metadata a GGUF export copies

    def __post_init__(self) -> None:
        from toolkit.export.gptq import SUPPORTED_BITS

        object.__setattr__(self, "formats", tuple(self.formats))
        parse_formats(",".join(self.formats))
        object.__setattr__(self, "out", Path(self.out))
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out: {self.out} exists and is not a folder")
        _check_int(self.threads, "threads", 1, optional=True)
        for name in ("prompt_tokens", "generate_tokens", "repeats", "perplexity_tokens"):
            _check_int(getattr(self, name), name, 1)
        if self.gptq_bits not in SUPPORTED_BITS:
            raise UserError(f"--bits: {self.gptq_bits!r} is not supported; choose from {', '.join(map(str, SUPPORTED_BITS))}")
        _check_int(self.gptq_group_size, "--group-size", 1, allow=(-1,))
        _check_int(self.gptq_samples, "--gptq-samples", 1)
        _check_int(self.task_limit, "--limit", 1, optional=True)
        from toolkit.engines.llamacpp import gguf_type

        object.__setattr__(self, "gguf_type", gguf_type(self.gguf_type).name)
        if self.source_gguf is not None:
            object.__setattr__(self, "source_gguf", Path(self.source_gguf))
        if "gptq" in self.formats and self.calibration_file is None:
            raise UserError("--calibration: GPTQ needs calibration text (default: <data-dir>/calibration/calibration.txt)")
        if "gptq" in self.formats and not Path(self.calibration_file).is_file():
            raise UserError(f"--calibration: {self.calibration_file}: no such file")

    def check_out(self) -> None:
        """Refuse existing format folders that neither --overwrite nor --resume may touch (cheap: no hashing)."""
        if self.overwrite or self.resume:
            return
        for fmt in self.formats:
            if (self.out / fmt).exists():
                raise UserError(f"{self.out / fmt}: exists; pass --resume to keep it if it verifies, --overwrite "
                                "to replace it, or choose another --out")


# -- resume ---------------------------------------------------------------------------------------
def reuse_problem(folder: Path, fmt: str, req: ExportRequest, source: Mapping[str, Any],
                  subnet: Mapping[str, Any] | None) -> str | None:
    """Why the existing ``folder`` cannot be kept for this export (None: it verifies and matches).

    Checks what makes an artifact this export's without running it: the manifest reads, every file's
    hash is as recorded, and format, sub-network, source model hash (and GPTQ settings) are the same.
    """
    try:
        m = Manifest.read(folder)
    except UserError as exc:
        return str(exc)
    problems = check_files(folder, m)
    if problems:
        return problems[0]
    if m.format != fmt:
        return f"its manifest says format {m.format!r}"
    if m.subnet != (dict(subnet) if subnet is not None else None):
        return "it holds another sub-network"
    if m.source.get("model_hash") != source.get("model_hash"):
        return f"it was exported from another model (hash {m.source.get('model_hash')!r})"
    if fmt == "gptq":
        d = m.details
        want = {"bits": req.gptq_bits, "group_size": req.gptq_group_size}
        diff = [k for k, v in want.items() if d.get(k) != v]
        if diff or d.get("calibration", {}).get("num_samples") != req.gptq_samples:
            return f"it was quantized with other settings ({', '.join(diff) or 'calibration samples'})"
    if fmt == "gguf" and m.details.get("gguf_type") != req.gguf_type:
        return f"it is of GGUF type {m.details.get('gguf_type')!r}, not {req.gguf_type!r}"
    return None


def plan_formats(req: ExportRequest, source: Mapping[str, Any], subnet: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The formats to keep as they are (``req.resume``); raises if a folder may not be replaced."""
    keep = []
    for fmt in req.formats:
        folder = req.out / fmt
        if not folder.exists():
            continue
        problem = reuse_problem(folder, fmt, req, source, subnet) if req.resume else None
        if req.resume and problem is None:
            keep.append(fmt)
        elif not req.overwrite:
            why = f" and cannot be kept ({problem})" if problem else ""
            raise UserError(f"{folder}: exists{why}; pass --overwrite to replace it, or choose another --out")
    return tuple(keep)


def clean_stale(out: Path) -> list[Path]:
    """Remove the hidden temporaries a killed export left in ``out`` (every format's, GPTQ's scratch)."""
    from toolkit.fileio import remove_stale

    return [p for name in (*FORMATS, GPTQ_SCRATCH) for p in remove_stale(Path(out) / name)]


# -- export ---------------------------------------------------------------------------------------
def _pytorch_decode(model, req: ExportRequest):
    from toolkit.calibrate.latency import measure_model
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
                  profile: Mapping[str, Any] | None = None, predicted: Mapping[str, Any] | None = None,
                  keep: Sequence[str] | None = None) -> dict[str, Path]:
    """Export the extracted sub-network ``child`` in every requested format; returns format -> folder.

    ``keep``: formats already checked by :func:`plan_formats` to be kept (computed here when None).
    """
    from toolkit.export.parity import make_reference
    from toolkit.fileio import atomic_directory

    req.out.mkdir(parents=True, exist_ok=True)
    clean_stale(req.out)
    keep = plan_formats(req, source, subnet) if keep is None else tuple(keep)
    todo = [f for f in req.formats if f not in keep]
    done: dict[str, Path] = {f: req.out / f for f in keep}
    base = {"source": dict(source), "subnet": subnet, "profile": profile}
    refs = [make_reference(child, tokenizer, p) for p in PARITY_PROMPTS] if {"hf", "onnx"} & set(todo) else []
    pt_speed = _pytorch_decode(child, req) if {"hf", "onnx", "gguf"} & set(todo) else None
    quantized_gguf = "gguf" in todo and req.gguf_type not in ("f32", "f16")
    fp_quality = _quality(child, tokenizer, req) if "gptq" in todo or quantized_gguf else {}
    for fmt in todo:
        with atomic_directory(req.out / fmt, overwrite=True) as tmp:
            _hook("TOOLKIT_EXPORT_TEST_SLEEP")
            if fmt == "hf":
                m = _export_hf(child, tokenizer, tmp, subnet, source, refs, pt_speed, predicted)
            elif fmt == "onnx":
                m = _export_onnx(child, tokenizer, tmp, req, refs, pt_speed, predicted)
            elif fmt == "gguf":
                m = _export_gguf(child, tokenizer, tmp, req, refs, pt_speed, fp_quality, predicted)
            else:
                m = _export_gptq(child, tokenizer, tmp, req, subnet, source, fp_quality, predicted, done.get("hf"))
            m.source, m.subnet, m.profile = base["source"], base["subnet"], base["profile"]
            m.write(tmp)
        done[fmt] = req.out / fmt
    return {f: done[f] for f in req.formats}


def _hook(var: str) -> None:
    """Test hook: sleep inside the export (so a test can kill the process mid-way)."""
    if os.environ.get(var):
        time.sleep(float(os.environ[var]))


def _throughput(measured_tps: float | None, predicted: Mapping[str, Any] | None, **extra) -> dict[str, Any]:
    return {"measured_decode_tokens_per_s": measured_tps,
            "predicted_decode_tokens_per_s": (predicted or {}).get("decode_tokens_per_s"),
            "predicted_prefill_ms": (predicted or {}).get("prefill_ms"),
            "predicted_peak_mem_bytes": (predicted or {}).get("peak_mem_bytes"), **extra}


def _check_tokenizer(tokenizer, ref, what: str) -> None:
    """The artifact's tokenizer must turn the reference prompt into the reference's ids."""
    ids = list(tokenizer(ref.prompt)["input_ids"])
    if ids != list(ref.prompt_ids):
        raise UserError(f"{what}: tokenizer: encodes the reference prompt {ref.prompt!r} differently from the "
                        "reference")


def _export_hf(child, tokenizer, tmp: Path, subnet, source, refs, pt_speed, predicted) -> Manifest:
    from toolkit.elastic import write_subnet
    from toolkit.export.hf import load_hf
    from toolkit.export.parity import check, merge, torch_logits
    from toolkit.space import SubnetConfig

    cfg = SubnetConfig.from_dict(subnet) if subnet else None
    write_subnet(child, tmp, tokenizer, cfg, source.get("model_hash"))
    hetero = child.config.model_type == "elastic_llama"
    reloaded, tok = load_hf(tmp)  # the toolkit's own classes: the check runs no code from the folder
    _check_tokenizer(tok, refs[0], "hf export")
    results = [check(r, torch_logits(reloaded, r.sequence), "hf export") for r in refs]
    cls = type(reloaded)
    return Manifest(format="hf", source={}, subnet=None, profile=None, reference=refs[0].to_dict(),
                    parity={**merge(results), "reloaded_by": f"{cls.__module__}.{cls.__name__} (trust_remote_code off)",
                            "greedy_equal": True},
                    throughput=_throughput(pt_speed.decode_tokens_per_s, predicted, runtime="pytorch eager",
                                           measured_prefill_ms=pt_speed.prefill_ms),
                    details={"heterogeneous": hetero, "trust_remote_code_needed": False,
                             "stock_transformers_needs_trust_remote_code": hetero})


def _export_onnx(child, tokenizer, tmp: Path, req: ExportRequest, refs, pt_speed, predicted) -> Manifest:
    from toolkit.export.onnx import OrtCausalLM, export_onnx
    from toolkit.export.parity import CONTINUATION_TOKENS, check, merge

    facts = export_onnx(child, tmp)
    tokenizer.save_pretrained(tmp)
    child.config.save_pretrained(tmp)
    ort_lm = OrtCausalLM(tmp, facts["kv_heads"], facts["head_dim"], threads=req.threads)
    results = [check(r, ort_lm.teacher_forced_logits(r.sequence, len(r.prompt_ids)), "onnx export") for r in refs]
    ms, spread = ort_lm.decode_ms_per_token(req.prompt_tokens, req.generate_tokens, req.repeats, child.config.vocab_size)
    ort_tps = 1e3 / ms
    return Manifest(format="onnx", source={}, subnet=None, profile=None, reference=refs[0].to_dict(),
                    parity={"runtime": "onnxruntime CPUExecutionProvider", **merge(results),
                            "greedy_tokens": CONTINUATION_TOKENS, "greedy_equal": True},
                    throughput=_throughput(ort_tps, predicted, runtime="onnxruntime", spread=spread,
                                           pytorch_eager_decode_tokens_per_s=pt_speed.decode_tokens_per_s,
                                           speedup_vs_pytorch_eager=ort_tps / pt_speed.decode_tokens_per_s),
                    details=facts)


def _export_gptq(child, tokenizer, tmp: Path, req: ExportRequest, subnet, source, fp_quality, predicted,
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
        facts = export_gptq(src, tmp, bits=req.gptq_bits, group_size=req.gptq_group_size,
                            calibration_file=req.calibration_file, num_samples=req.gptq_samples)
        fp_bytes = sum(p.stat().st_size for p in Path(src).glob("*.safetensors"))
    qmodel, qtok = load_gptq(tmp)
    ref = make_reference(qmodel, qtok, REFERENCE_PROMPT)
    q_quality = _quality(qmodel, qtok, req)
    q_bytes = sum(p.stat().st_size for p in tmp.glob("*.safetensors"))
    speed = _pytorch_decode(qmodel, req)
    return Manifest(format="gptq", source={}, subnet=None, profile=None, reference=ref.to_dict(),
                    parity={"method": "teacher-forced",
                            "reference_from": "the quantized model as toolkit.export.gptq.load_gptq loads it "
                                              "(4-bit logits differ from fp32 by design: see accuracy)"},
                    accuracy={"before": fp_quality, "after": q_quality},
                    throughput=_throughput(speed.decode_tokens_per_s, predicted, runtime="gptqmodel (CPU)"),
                    details={**facts, "weights_bytes": q_bytes, "fp32_weights_bytes": fp_bytes,
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


def gguf_tolerance(gguf_type: str) -> float:
    from toolkit.export.parity import TOLERANCE

    return TOLERANCE if gguf_type == "f32" else GGUF_F16_TOLERANCE if gguf_type in ("f16", "bf16") else GGUF_QUANT_TOLERANCE


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


def _llama_tokens(lm, text: str) -> list[int]:
    return list(lm.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))


def _export_gguf(child, tokenizer, tmp: Path, req: ExportRequest, refs, pt_speed, fp_quality, predicted) -> Manifest:
    from toolkit.engines.llamacpp import LlamaCpp, gguf_type
    from toolkit.export.gguf import GGUF_FILE, write_gguf
    from toolkit.export.parity import check, make_reference, merge

    t = gguf_type(req.gguf_type)
    facts = write_gguf(child, tmp / GGUF_FILE, gguf_type=t.name, tokenizer=tokenizer, source_gguf=req.source_gguf,
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
            if _llama_tokens(lm, text) != list(tokenizer(text, add_special_tokens=False)["input_ids"]):
                raise UserError(f"gguf export: tokenizer: llama.cpp encodes {text!r} differently from the Hugging "
                                f"Face tokenizer (tokenizer.ggml.pre {facts['tokenizer'].get('pre')!r})")
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
                    details={**facts, "fp32_bytes": fp32_bytes, "size_ratio_vs_fp32": fp32_bytes / facts["bytes"]})


GGUF_MAX_PERPLEXITY_RATIO = 2.0  # a quantized GGUF whose perplexity more than doubles is refused as broken


def _check_quantized_perplexity(quality: Mapping[str, Any], type_name: str) -> None:
    before = quality.get("before", {}).get("perplexity", {}).get("value")
    after = quality.get("after", {}).get("perplexity", {}).get("value")
    if before and after and after > GGUF_MAX_PERPLEXITY_RATIO * before:
        raise UserError(f"gguf export: {type_name}: perplexity {before:.2f} -> {after:.2f} in llama.cpp, more than "
                        f"{GGUF_MAX_PERPLEXITY_RATIO:g}x the fp32 sub-network's; the quantized file is not usable")


def _llama_quality(path: Path, tokenizer, req: ExportRequest) -> dict[str, Any]:
    """Perplexity (and task accuracy) of the GGUF in llama.cpp, as :func:`_quality` measures PyTorch's
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


# -- verify ----------------------------------------------------------------------------------------
def verify(folder: Path, threads: int | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Re-hash an artifact's files and re-run it, teacher-forced, against its manifest's reference.

    Runs no code from the folder unless ``trust_remote_code`` (:mod:`toolkit.export.hf`). Raises a
    UserError (one line) on any failure.
    """
    from toolkit.export.parity import check, torch_logits
    from toolkit.measure import torch_threads

    folder = Path(folder)
    m = Manifest.read(folder)
    problems = check_files(folder, m)
    if problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    ref = m.parity_reference(folder)
    if m.format == "gguf":
        return _verify_gguf(folder, m, ref, threads)
    if m.format == "onnx":
        from toolkit.export.hf import load_tokenizer
        from toolkit.export.onnx import OrtCausalLM

        lm = OrtCausalLM.from_artifact(folder, threads)
        tok = load_tokenizer(folder, trust_remote_code)
        logits = lm.teacher_forced_logits(ref.sequence, len(ref.prompt_ids))
    else:
        if m.format == "gptq":
            from toolkit.export.gptq import load_gptq

            model, tok = load_gptq(folder, trust_remote_code=trust_remote_code)
        else:
            from toolkit.export.hf import load_hf

            model, tok = load_hf(folder, trust_remote_code=trust_remote_code)
        with torch_threads(threads):
            logits = torch_logits(model, ref.sequence)
    _check_tokenizer(tok, ref, str(folder))
    res = check(ref, logits, str(folder))
    return {"folder": str(folder), "format": m.format, "files": len(m.files), "method": "teacher-forced",
            "positions": res.positions, "max_abs_logit_diff": res.max_abs_logit_diff, "near_ties": res.near_ties,
            "trust_remote_code": trust_remote_code, "ok": True}


def _verify_gguf(folder: Path, m: Manifest, ref, threads: int | None) -> dict[str, Any]:
    """Re-run a GGUF in llama.cpp (teacher-forced, f32 KV cache) against its reference; llama.cpp's tokenizer
    must encode the reference prompt as recorded. The tolerance comes from the file's type, not the manifest."""
    from toolkit.engines.llamacpp import LlamaCpp, gguf_type, metadata
    from toolkit.export.gguf import GGUF_FILE
    from toolkit.export.parity import check

    name = m.details.get("gguf_type")
    t = gguf_type(name, f"{folder / 'manifest.json'}: details.gguf_type")
    ftype = metadata(folder / GGUF_FILE).get("general.file_type")
    if ftype is not None and int(ftype) != t.ftype:
        raise UserError(f"{folder / GGUF_FILE}: general.file_type {ftype} is not the manifest's {t.name} ({t.ftype})")
    with LlamaCpp(folder / GGUF_FILE, threads=threads, n_ctx=max(256, len(ref.sequence) + 8), kv_f32=True) as lm:
        logits = lm.logits(ref.sequence)
        if _llama_tokens(lm, ref.prompt) != list(ref.prompt_ids):
            raise UserError(f"{folder}: tokenizer: llama.cpp encodes the reference prompt {ref.prompt!r} differently "
                            "from the reference")
    res = check(ref, logits, str(folder), gguf_tolerance(t.name))
    return {"folder": str(folder), "format": "gguf", "gguf_type": t.name, "files": len(m.files),
            "method": "teacher-forced", "runtime": "llama.cpp", "positions": res.positions,
            "max_abs_logit_diff": res.max_abs_logit_diff, "near_ties": res.near_ties, "trust_remote_code": False,
            "ok": True}
