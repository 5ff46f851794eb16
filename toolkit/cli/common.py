"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Mapping

from toolkit.fileio import DATA_DIR_ENV


def _number(kind, low: float | None, high: float | None, low_open: bool = False):
    """An argparse ``type`` that parses ``kind`` and checks a range, so a bad flag is refused before any work."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if value != value or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
            hi = "" if high is None else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range (must be {' and '.join(x for x in (lo, hi) if x)})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 1, None)  # counts: --samples, --evals, threads
non_negative_int = _number(int, 0, None)  # --limit (0 = all)
fraction = _number(float, 0.0, 1.0)  # accuracies, tolerances in [0, 1]
positive_float = _number(float, 0.0, None, low_open=True)  # budgets in bytes / parameters


def add_model_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--model", "-m", required=required, default=None if required else "smollm2-135m",
        help="HF folder of a Llama-family model, a .gguf file, or 'smollm2-135m' (the embedded default)",
    )


def add_data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help=f"benchmark data directory (default: ${DATA_DIR_ENV} or ../shared/data)")


def add_output_args(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    """``--json``, ``-v`` and ``-q``, the same on every subcommand (added by ``cli.main`` to each one).
    ``suppress_defaults``: for a sub-subcommand, whose parent has the flags with their defaults already."""
    out = parser.add_argument_group("output")
    keep = {"default": argparse.SUPPRESS} if suppress_defaults else {}
    out.add_argument("--json", action="store_true", **keep,
                     help="print the command's result as one JSON object on stdout (default: tables and lines for people)")
    out.add_argument("-v", "--verbose", action="count", **(keep or {"default": 0}),
                     help="more messages on stderr (-v: debug messages of the toolkit, -vv: also of its libraries)")
    out.add_argument("-q", "--quiet", action="store_true", **keep, help="only warnings and errors on stderr, no progress bars")


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Messages of the ``toolkit`` loggers go to stderr (stdout is the command's result): INFO by default,
    WARNING with ``-q``, DEBUG with ``-v``; ``-vv`` also shows the libraries' DEBUG messages."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s" if level > logging.DEBUG else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("toolkit")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if verbose >= 2:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, force=True)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message is logged (not when the handler was made)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def emit(args: argparse.Namespace, result: Mapping[str, Any], title: str | None = None) -> None:
    """A command's result on stdout: one JSON object with ``--json``, else a two-column table in which
    nested objects become dotted rows (``cv.prefill_ms.mape_pct``) and floats are shown to 4 digits."""
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
        return
    from rich.table import Table

    from toolkit.progress import stdout_console

    t = Table(title=title, show_header=False)
    for k, v in _rows(result):
        t.add_row(k, v)
    stdout_console().print(t)


def _rows(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_rows(v, key + "."))
        elif isinstance(v, float):
            rows.append((key, f"{v:.4g}"))
        elif isinstance(v, (list, dict)):
            rows.append((key, json.dumps(v)))
        else:
            rows.append((key, str(v)))
    return rows
