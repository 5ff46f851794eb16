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

        def bad(name: str, problem: str) -> ConfigError:
            return ConfigError(name, problem, file)

        if not isinstance(d, Mapping):
            raise bad("<root>", f"expected a JSON object (a manifest written by toolkit export), got {type(d).__name__}")
        if d.get("version") != MANIFEST_VERSION:
            raise bad("version", f"unsupported manifest version {d.get('version')!r} (this toolkit reads "
                                 f"{MANIFEST_VERSION}); re-export the artifact")
        for name in ("format", "source", "reference", "files"):
            if name not in d:
                raise bad(name, "missing required field")
        if d["format"] not in FORMATS:
            raise bad("format", f"unknown format {d['format']!r} ({', '.join(FORMATS)})")
        for name in ("source", "parity", "accuracy", "throughput", "details", "files"):
            if not isinstance(d.get(name, {}), Mapping):
                raise bad(name, f"expected an object, got {type(d[name]).__name__}")
        for name in ("subnet", "profile"):
            if d.get(name) is not None and not isinstance(d[name], Mapping):
                raise bad(name, f"expected an object or null, got {type(d[name]).__name__}")
        if not isinstance(d.get("created", ""), str):
            raise bad("created", "expected a string")
        for name, rec in d["files"].items():
            where = f"files[{name!r}]"
            p = PurePosixPath(name)
            if not name or p.is_absolute() or ".." in p.parts or "\\" in name or name == MANIFEST:
                raise bad(where, "not a relative path inside the artifact folder")
            if not isinstance(rec, Mapping):
                raise bad(where, "expected an object with sha256 and bytes")
            if not (isinstance(rec.get("sha256"), str) and len(rec["sha256"]) == 64
                    and all(c in "0123456789abcdef" for c in rec["sha256"])):
                raise bad(f"{where}.sha256", "expected 64 lowercase hex digits")
            size = rec.get("bytes")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise bad(f"{where}.bytes", "expected a non-negative integer")
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
