"""``manifest.json``: what an exported artifact is, where it came from, and how it checked out.

Every artifact folder carries one. It records the source model hash, the sub-network config, the device
profile, the format, every file's sha256 and size, parity and accuracy figures, predicted and measured
throughput, and a small *reference* (:mod:`toolkit.export.parity`): a fixed prompt, PyTorch's greedy
continuation of it, and PyTorch's top-k logits at every position of that sequence. ``toolkit verify DIR``
re-hashes every file and feeds the same sequence to the artifact in its runtime (teacher-forced), so
verification needs neither the parent model nor the toolkit's search outputs. Every field is validated
on reading: a hand-edited or foreign manifest is a one-line error naming the field.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from toolkit import schema
from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_write_json, sha256_file

MANIFEST_VERSION = 2  # 2: the reference is teacher-forced (toolkit.export.parity); 1 compared free-running greedy
MANIFEST = "manifest.json"
FORMATS = ("hf", "onnx", "gptq", "gguf")


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``folder`` except the manifest itself."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts:
            out[p.relative_to(folder).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


@dataclass
class Manifest:
    """The contract of ``manifest.json``: what an artifact folder holds and what it was checked against.

    :meth:`from_dict` validates the fields ``verify`` relies on (``version``, ``format``, ``source``,
    ``reference``, ``files``; the others must be objects or null); the rest is a record of the export.

    * ``version``: :data:`MANIFEST_VERSION` (2: the reference is teacher-forced); other versions are refused.
    * ``format``: one of :data:`FORMATS` (``hf``, ``onnx``, ``gptq``, ``gguf``).
    * ``created``: when the manifest was written, ISO 8601 in UTC, to the second.
    * ``source``: the parent model the sub-network was cut from: ``model`` (as given: an embedded model's name
      or a path), ``model_hash`` (the toolkit's hash of its weights), ``source_kind`` (``embedded``, ``gguf``
      or ``hf``).
    * ``subnet``: the sub-network, :meth:`toolkit.space.SubnetConfig.to_dict` (kept layer indices, per-layer
      MLP width and query heads); null when the artifact is not a sub-network.
    * ``profile``: the device profile the export ran with, ``{"name", "fingerprint"}``; null without one.
    * ``reference``: :meth:`toolkit.export.parity.Reference.to_dict`: the prompt, its token ids, the greedy
      continuation's ids and, at every position of that sequence, the ``top_k`` highest ids and their logits
      (raw, unnormalised). ``verify`` feeds the sequence to the artifact and compares.
    * ``parity``: how the artifact matched its reference at export time: :func:`toolkit.export.parity.merge`
      over the parity prompts (``prompts``, ``positions`` compared, ``tolerance`` and ``max_abs_logit_diff``
      in logits, ``near_ties``, ``greedy_mismatches`` and ``off_topk`` position counts, ``ok``), plus
      ``runtime`` and ``reference_from`` where the reference is not PyTorch's fp32 model (GPTQ and quantized
      GGUF: the artifact's own output), ``greedy_equal`` and (GGUF) ``tokenizer_equal``.
    * ``accuracy``: GPTQ and quantized GGUF only (else empty): ``before`` (the fp32 sub-network in PyTorch)
      and ``after`` (the artifact), each with ``perplexity`` ``{"file", "tokens", "value"}`` (windows of 512
      tokens) and, with a task, ``task`` ``{"name", "n", "acc", "acc_stderr", "acc_norm"}`` (fractions in
      [0, 1]).
    * ``throughput``: on the profile's workload (prompt and generated tokens, threads):
      ``measured_decode_tokens_per_s`` in ``runtime`` (``pytorch eager``, ``onnxruntime``, ``gptqmodel (CPU)``,
      ``llama.cpp <type>``); ``predicted_decode_tokens_per_s``, ``predicted_prefill_ms`` and
      ``predicted_peak_mem_bytes`` from the search's predictor (null without one); where measured,
      ``measured_prefill_ms``, ``spread`` (relative interquartile range of the timing samples: a number, or
      per quantity for llama.cpp), ``pytorch_eager_decode_tokens_per_s`` and ``speedup_vs_pytorch_eager``
      (a ratio).
    * ``details``: facts of the format. ``hf``: ``heterogeneous``, whether stock transformers needs
      ``trust_remote_code``. ``onnx``: ``file``, ``kv_heads`` (per layer), ``head_dim`` (the cache layout
      ``verify`` needs), ``export_seconds``, ``exporter``. ``gptq``: ``bits``, ``group_size``, ``desc_act``,
      ``sym``, ``dtype``, ``device``, ``quantizer``, ``calibration`` ``{"file", "num_samples", "seq_len",
      "seed"}``, ``seconds``, ``size_bytes`` (the folder), ``weights_bytes`` / ``fp32_weights_bytes`` (the
      safetensors files) and their ratios ``size_ratio_vs_fp32`` / ``size_ratio_vs_fp16``. ``gguf``: what
      :func:`toolkit.export.gguf.write_gguf` returns (``architecture`` ``llama`` or ``deci``,
      ``heterogeneous``, ``block_count``, ``head_dim``, ``layers`` ``[{"heads", "kv_heads", "ff"}]`` per kept
      layer, ``tied_embeddings``, ``tokenizer`` (where its metadata came from), ``gguf_type``,
      ``quantized_by``, ``bytes`` of the file), ``fp32_bytes`` (4 bytes per parameter) and
      ``size_ratio_vs_fp32``.
    * ``files``: every file of the folder but the manifest, by POSIX path relative to the folder:
      ``{"sha256": 64 hex digits, "bytes": size}``. ``verify`` refuses a missing, changed or extra file.
    """

    format: str
    source: Mapping[str, Any]  # model, model_hash
    subnet: Mapping[str, Any] | None  # SubnetConfig dict
    profile: Mapping[str, Any] | None  # name, fingerprint
    reference: Mapping[str, Any]  # toolkit.export.parity.Reference.to_dict(): the teacher-forced reference
    parity: Mapping[str, Any] = field(default_factory=dict)
    accuracy: Mapping[str, Any] = field(default_factory=dict)
    throughput: Mapping[str, Any] = field(default_factory=dict)  # predicted / measured on the profile's workload
    details: Mapping[str, Any] = field(default_factory=dict)  # format-specific facts
    files: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "format": self.format, "created": self.created, "source": dict(self.source),
                "subnet": self.subnet, "profile": self.profile, "reference": dict(self.reference),
                "parity": dict(self.parity), "accuracy": dict(self.accuracy), "throughput": dict(self.throughput),
                "details": dict(self.details), "files": dict(self.files)}

    def write(self, folder: Path) -> None:
        """Hash the folder's files and write the manifest (call last, inside the atomic export dir)."""
        self.files = file_table(folder)
        self.created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_json(folder / MANIFEST, self.to_dict())

    def parity_reference(self, folder: Path | None = None):
        """The reference as a validated :class:`toolkit.export.parity.Reference`."""
        from toolkit.export.parity import Reference

        return Reference.from_dict(self.reference, str(Path(folder) / MANIFEST) if folder is not None else None)

    @classmethod
    def from_dict(cls, d: Any, file: str | None = None) -> "Manifest":
        """Validate a manifest's fields (types, the file table's names and hashes, the reference)."""
        from toolkit.export.parity import Reference

        if not isinstance(d, Mapping):
            raise ConfigError("<root>", f"expected a JSON object (a manifest written by toolkit export), got "
                              f"{type(d).__name__}", file)
        if d.get("version") != MANIFEST_VERSION:
            raise ConfigError("version", f"unsupported manifest version {d.get('version')!r} (this toolkit reads "
                              f"{MANIFEST_VERSION}); re-export the artifact", file)
        schema.get(d, "format", _format, file)
        for name in ("source", "reference", "files"):
            schema.get(d, name, _object, file)
        for name in ("parity", "accuracy", "throughput", "details"):
            schema.get(d, name, _object, file, {})
        for name in ("subnet", "profile"):
            schema.get(d, name, _object_or_null, file, None)
        schema.get(d, "created", schema.string(), file, "")
        schema.get(d, "files", _file_table, file)
        Reference.from_dict(d["reference"], file)
        return cls(format=d["format"], source=d["source"], subnet=d.get("subnet"), profile=d.get("profile"),
                   reference=d["reference"], parity=d.get("parity", {}), accuracy=d.get("accuracy", {}),
                   throughput=d.get("throughput", {}), details=d.get("details", {}), files=d["files"],
                   created=d.get("created", ""), version=d["version"])

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        from toolkit.schema import parse_json, read_text_file

        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise UserError(f"{folder}: no {MANIFEST} (not an exported artifact)")
        return cls.from_dict(parse_json(read_text_file(path), str(path)), str(path))


def _format(v: Any) -> str:
    if v not in FORMATS:
        raise schema.Invalid(f"unknown format {v!r} ({', '.join(FORMATS)})")
    return v


def _object(v: Any) -> Mapping:
    if not isinstance(v, Mapping):
        raise schema.Invalid(f"expected an object, got {type(v).__name__}")
    return v


def _object_or_null(v: Any) -> Mapping | None:
    if v is not None and not isinstance(v, Mapping):
        raise schema.Invalid(f"expected an object or null, got {type(v).__name__}")
    return v


def _file_table(files: Any) -> Mapping:
    """``{relative POSIX path: {"sha256": 64 hex digits, "bytes": size}}``, every path inside the folder."""
    for name, rec in _object(files).items():
        where = f"[{name!r}]"
        p = PurePosixPath(name)
        if not name or p.is_absolute() or ".." in p.parts or "\\" in name or name == MANIFEST:
            raise schema.Invalid("not a relative path inside the artifact folder", where)
        if not isinstance(rec, Mapping):
            raise schema.Invalid("expected an object with sha256 and bytes", where)
        digest = rec.get("sha256")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise schema.Invalid("expected 64 lowercase hex digits", f"{where}.sha256")
        size = rec.get("bytes")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise schema.Invalid("expected a non-negative integer", f"{where}.bytes")
    return files


def check_files(folder: Path, manifest: Manifest) -> list[str]:
    """Problems with the folder's files vs. the manifest, each naming the file."""
    problems = []
    now = file_table(folder)
    for name, rec in manifest.files.items():
        if name not in now:
            problems.append(f"{folder / name}: missing")
        elif now[name]["sha256"] != rec["sha256"]:
            problems.append(f"{folder / name}: sha256 mismatch (modified after export)")
    for name in sorted(set(now) - set(manifest.files)):
        problems.append(f"{folder / name}: not in the manifest")
    return problems
