"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from toolkit.errors import UserError

DATA_DIR_ENV = "TOOLKIT_DATA_DIR"


def add_model_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--model", "-m", required=required, default=None if required else "smollm2-135m",
        help="HF folder of a Llama-family model, a .gguf file, or 'smollm2-135m' (the embedded default)",
    )


def add_data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help=f"benchmark data directory (default: ${DATA_DIR_ENV} or ../shared/data)")


def data_dir(explicit: str | None = None) -> Path:
    """The benchmark data directory: --data-dir, $TOOLKIT_DATA_DIR, or a ``shared/data`` beside the project."""
    candidates = [explicit, os.environ.get(DATA_DIR_ENV)]
    if not any(candidates):
        here = Path(__file__).resolve()
        candidates += [str(p / "shared" / "data") for p in (Path.cwd().parent, here.parents[3])]
        candidates.append(str(Path.cwd() / "data"))
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c)
    if explicit or os.environ.get(DATA_DIR_ENV):
        raise UserError(f"{explicit or os.environ.get(DATA_DIR_ENV)}: data directory not found")
    raise UserError(f"no data directory: pass --data-dir or set ${DATA_DIR_ENV} (e.g. ../shared/data)")


def default_calibration_file(explicit: str | None, data: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    return data_dir(data) / "calibration" / "calibration.txt"
