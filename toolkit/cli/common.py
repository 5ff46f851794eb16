"""Arguments and helpers shared by several subcommands."""

from __future__ import annotations

import argparse


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
