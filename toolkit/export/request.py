"""What to export and how to check it (:class:`ExportRequest`), and what an export into ``OUT`` may do there.

Everything here runs before a model is loaded: the request validates itself on construction, and
:func:`plan_formats` decides, per format folder already in ``OUT``, whether it is kept (``resume``: its
manifest reads, every file's hash is as recorded, same sub-network and source model), replaced
(``overwrite``) or refused. :func:`clean_stale` sweeps the hidden temporaries a killed export left behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from toolkit.errors import UserError
from toolkit.export.manifest import FORMATS, Manifest, check_files

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
