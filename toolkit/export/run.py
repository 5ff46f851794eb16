"""The export itself: every requested format of one sub-network, each written and checked atomically.

:func:`export_subnet` plans (:mod:`toolkit.export.request`), makes what every format is compared with
once (PyTorch's references on the parity prompts, its decode speed, and its perplexity / task accuracy
where a quantized format needs them), then runs each format's step (:mod:`toolkit.export.formats`) in a
temporary sibling of ``OUT/<format>/`` that is renamed into place only when the step and its checks
succeeded, and writes the format's manifest last.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from toolkit.export.request import ExportRequest, clean_stale, plan_formats


def export_subnet(child, tokenizer, req: ExportRequest, source: Mapping[str, Any], subnet: Mapping[str, Any] | None,
                  profile: Mapping[str, Any] | None = None, predicted: Mapping[str, Any] | None = None,
                  keep: Sequence[str] | None = None) -> dict[str, Path]:
    """Export the extracted sub-network ``child`` in every requested format; returns format -> folder.

    ``keep``: formats already checked by :func:`plan_formats` to be kept (computed here when None).
    """
    from toolkit.export.formats import build_gguf, build_gptq, build_hf, build_onnx, pytorch_decode, pytorch_quality
    from toolkit.export.parity import PARITY_PROMPTS, make_reference
    from toolkit.fileio import atomic_directory

    req.out.mkdir(parents=True, exist_ok=True)
    clean_stale(req.out)
    keep = plan_formats(req, source, subnet) if keep is None else tuple(keep)
    todo = [f for f in req.formats if f not in keep]
    done: dict[str, Path] = {f: req.out / f for f in keep}
    base = {"source": dict(source), "subnet": subnet, "profile": profile}
    refs = [make_reference(child, tokenizer, p) for p in PARITY_PROMPTS] if {"hf", "onnx"} & set(todo) else []
    pt_speed = pytorch_decode(child, req) if {"hf", "onnx", "gguf"} & set(todo) else None
    quantized_gguf = "gguf" in todo and req.gguf_type not in ("f32", "f16")
    fp_quality = pytorch_quality(child, tokenizer, req) if "gptq" in todo or quantized_gguf else {}
    for fmt in todo:
        with atomic_directory(req.out / fmt, overwrite=True) as tmp:
            _hook("TOOLKIT_EXPORT_TEST_SLEEP")
            if fmt == "hf":
                m = build_hf(child, tokenizer, tmp, subnet, source, refs, pt_speed, predicted)
            elif fmt == "onnx":
                m = build_onnx(child, tokenizer, tmp, req, refs, pt_speed, predicted)
            elif fmt == "gguf":
                m = build_gguf(child, tokenizer, tmp, req, refs, pt_speed, fp_quality, predicted)
            else:
                m = build_gptq(child, tokenizer, tmp, req, subnet, source, fp_quality, predicted, done.get("hf"))
            m.source, m.subnet, m.profile = base["source"], base["subnet"], base["profile"]
            m.write(tmp)
        done[fmt] = req.out / fmt
    return {f: done[f] for f in req.formats}


def _hook(var: str) -> None:
    """Test hook: sleep inside the export (so a test can kill the process mid-way)."""
    if os.environ.get(var):
        time.sleep(float(os.environ[var]))
