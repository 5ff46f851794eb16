"""``toolkit verify``: re-check an exported artifact against its own manifest, with nothing else at hand.

Re-hashes every file the manifest lists (a missing, changed or extra file fails), then runs the artifact
in its runtime, teacher-forced on the manifest's reference sequence (:mod:`toolkit.export.parity`), and
checks that its tokenizer encodes the reference prompt as recorded. Needs neither the parent model nor
the search's outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.errors import UserError
from toolkit.export.manifest import Manifest, check_files


def verify(folder: Path, threads: int | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Re-hash an artifact's files and re-run it, teacher-forced, against its manifest's reference.

    Runs no code from the folder unless ``trust_remote_code`` (:mod:`toolkit.export.hf`). Raises a
    UserError (one line) on any failure.
    """
    from toolkit.export.parity import check, check_tokenizer, torch_logits
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
    check_tokenizer(tok, ref, str(folder))
    res = check(ref, logits, str(folder))
    return {"folder": str(folder), "format": m.format, "files": len(m.files), "method": "teacher-forced",
            "positions": res.positions, "max_abs_logit_diff": res.max_abs_logit_diff, "near_ties": res.near_ties,
            "trust_remote_code": trust_remote_code, "ok": True}


def _verify_gguf(folder: Path, m: Manifest, ref, threads: int | None) -> dict[str, Any]:
    """Re-run a GGUF in llama.cpp (teacher-forced, f32 KV cache) against its reference; llama.cpp's tokenizer
    must encode the reference prompt as recorded. The tolerance comes from the file's type, not the manifest."""
    from toolkit.engines.llamacpp import LlamaCpp, gguf_type, metadata
    from toolkit.export.gguf import GGUF_FILE, gguf_tolerance
    from toolkit.export.parity import check

    name = m.details.get("gguf_type")
    t = gguf_type(name, f"{folder / 'manifest.json'}: details.gguf_type")
    ftype = metadata(folder / GGUF_FILE).get("general.file_type")
    if ftype is not None and int(ftype) != t.ftype:
        raise UserError(f"{folder / GGUF_FILE}: general.file_type {ftype} is not the manifest's {t.name} ({t.ftype})")
    with LlamaCpp(folder / GGUF_FILE, threads=threads, n_ctx=max(256, len(ref.sequence) + 8), kv_f32=True) as lm:
        logits = lm.logits(ref.sequence)
        if lm.tokenize(ref.prompt) != list(ref.prompt_ids):
            raise UserError(f"{folder}: tokenizer: llama.cpp encodes the reference prompt {ref.prompt!r} differently "
                            "from the reference")
    res = check(ref, logits, str(folder), gguf_tolerance(t.name))
    return {"folder": str(folder), "format": "gguf", "gguf_type": t.name, "files": len(m.files),
            "method": "teacher-forced", "runtime": "llama.cpp", "positions": res.positions,
            "max_abs_logit_diff": res.max_abs_logit_diff, "near_ties": res.near_ties, "trust_remote_code": False,
            "ok": True}
