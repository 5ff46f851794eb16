"""``manifest.json``: what an exported artifact is, where it came from, and how it checked out.

Every artifact folder carries one. It records the source model hash, the sub-network config, the device
profile, the format, every file's sha256 and size, parity and accuracy figures, predicted and measured
throughput, and a small *reference*: the PyTorch logits of a fixed prompt and the greedy continuation.
``toolkit verify DIR`` re-hashes every file and re-runs the artifact in its runtime against that
reference, so verification needs neither the parent model nor the toolkit's search outputs.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from toolkit.errors import ConfigError, UserError
from toolkit.fileio import atomic_write_json, sha256_file

MANIFEST_VERSION = 1
MANIFEST = "manifest.json"
REFERENCE_PROMPT = "The capital of France is"


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
    reference: Mapping[str, Any]  # prompt, input_ids, logits_last (first 64), greedy_ids
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

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise UserError(f"{folder}: no {MANIFEST} (not an exported artifact)")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"line {exc.lineno}", f"invalid JSON ({exc.msg})", str(path)) from None
        if d.get("version") != MANIFEST_VERSION:
            raise ConfigError("version", f"unsupported manifest version {d.get('version')!r}", str(path))
        try:
            return cls(format=d["format"], source=d["source"], subnet=d.get("subnet"), profile=d.get("profile"),
                       reference=d["reference"], parity=d.get("parity", {}), accuracy=d.get("accuracy", {}),
                       throughput=d.get("throughput", {}), details=d.get("details", {}), files=d["files"],
                       created=d.get("created", ""), version=d["version"])
        except KeyError as exc:
            raise ConfigError(str(exc.args[0]), "missing required field", str(path)) from None


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
