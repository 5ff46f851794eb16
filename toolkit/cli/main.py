"""Entry point of the ``toolkit`` command.

Each subcommand lives in its own module under ``toolkit.cli`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed args, returns an exit code). Modules
import their heavy dependencies inside ``func`` so ``toolkit --help`` stays fast.

A :class:`toolkit.errors.UserError` becomes one line on stderr and exit code 2, with no traceback; a
closed stdout pipe ends the command quietly with 141 (128 + SIGPIPE), like other Unix tools.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys

# The data flow, in order: profile -> calibrate -> (finetune) -> search -> export, each stage followed by
# the command that reads its file; then the tools around them.
SUBCOMMANDS = (
    "profile",
    "calibrate",
    "predict",
    "finetune",
    "search",
    "report",
    "export",
    "verify",
    "info",
    "eval",
)


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (``error: toolkit search: --limit: ...``), exit 2.

    Stock argparse prints the whole usage block before the message; the toolkit's contract for bad input
    is one line on stderr. Sub-parsers inherit this class (``add_subparsers`` uses the parent's type).
    """

    def error(self, message: str):  # noqa: D102 (argparse API)
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from toolkit import __version__

    parser = _Parser(
        prog="toolkit",
        description="Find the best smaller version of a LLaMA-family model for a given machine.\n"
        "Stages: profile -> calibrate -> search -> export; each reads the previous stage's file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"toolkit.cli.{name}").register(sub)
    for command in sub.choices.values():
        _add_output_args_everywhere(command)
    return parser


def _add_output_args_everywhere(parser: argparse.ArgumentParser, nested: bool = False) -> None:
    """``--json``/``-v``/``-q`` on a subcommand and on its own subcommands (``profile ls``).

    On a nested one their defaults are suppressed: argparse copies a sub-parser's defaults over what the
    parent parsed, so ``profile --json ls`` would otherwise lose its ``--json``. A subcommand that defined
    one of these flags itself would be an argparse conflict error here, not a second meaning."""
    from toolkit.cli.common import add_output_args

    add_output_args(parser, suppress_defaults=nested)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_output_args_everywhere(child, nested=True)


def main(argv: list[str] | None = None) -> int:
    from toolkit.errors import UserError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command_line = "toolkit " + " ".join(shlex.quote(a) for a in argv)  # recorded in output files
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from toolkit.cli.common import configure_logging

    configure_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    import os

    progress_before = os.environ.get("TOOLKIT_PROGRESS")
    if getattr(args, "quiet", False):
        os.environ["TOOLKIT_PROGRESS"] = "0"  # read by toolkit.progress (and Ray workers): -q turns the bars off too
    try:
        rc = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe (`toolkit predict ... | head -1`) surfaces here, not at exit
        return rc
    except BrokenPipeError:
        return _stdout_closed()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # main() may be called again in this process (tests, benchmarks/bad_inputs.py)
        if progress_before is None:
            os.environ.pop("TOOLKIT_PROGRESS", None)
        else:
            os.environ["TOOLKIT_PROGRESS"] = progress_before


def _stdout_closed() -> int:
    """The reader of our stdout went away: stop quietly, as ``cat`` does, with the shell's SIGPIPE status.

    stdout is pointed at /dev/null so the interpreter's final flush does not print a second error.
    """
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout replaced by an object without a file descriptor
        pass
    return 141  # 128 + SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
