"""Rich progress bars and spinners, written to stderr so stdout stays machine-readable; and the one
console a command prints its tables to stdout with (:func:`stdout_console`).

Disabled automatically when stderr is not a terminal and ``TOOLKIT_PROGRESS`` is not set to ``1``
(CI logs stay clean); ``TOOLKIT_PROGRESS=0`` turns them off everywhere.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator


def enabled() -> bool:
    flag = os.environ.get("TOOLKIT_PROGRESS")
    if flag is not None:
        return flag == "1"
    return sys.stderr.isatty()


def stdout_console():
    """A rich console on stdout for a command's tables.

    In a pipe or a file it is as wide as its lines need (rich's default there is 80 columns, which cuts
    paths and numbers). A reader that goes away (``| head``) raises BrokenPipeError, which ``cli.main``
    turns into a quiet exit 141; rich's own handling would exit with status 1.
    """
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(32, "Broken pipe")

    isatty = getattr(sys.stdout, "isatty", None)  # stdout may be replaced by an object without one
    return _Console() if isatty is not None and isatty() else _Console(width=400)


def console():
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    if not enabled():
        yield
        return
    with console().status(message):
        yield


def progress_bar(transient: bool = False):
    """A rich Progress with elapsed and remaining time; a no-op object when progress is off."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console(),
        transient=transient,
        disable=not enabled(),
    )
