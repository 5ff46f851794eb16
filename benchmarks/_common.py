"""Shared by the benchmark scripts: machine fingerprint, load, and atomic result writing."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    import psutil
    import torch

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
    }
    try:
        from toolkit.profiles import fingerprint_current_machine

        info["fingerprint"] = fingerprint_current_machine()
    except ImportError:  # pragma: no cover
        info["fingerprint"] = None
    return info


def command() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def write(name: str, data: dict, results_dir: Path | None = None, command_line: str | None = None) -> Path:
    """``<results_dir>/<name>.json`` (default ``benchmarks/results``), atomically, with the command and machine.
    ``command_line`` replaces ``sys.argv`` for a script whose ``main(argv)`` was called from Python (tests)."""
    from toolkit.fileio import atomic_write_json

    path = Path(results_dir or RESULTS) / f"{name}.json"
    atomic_write_json(path, {"benchmark": name, "command": command_line or command(), "machine": machine(), **data})
    return path
