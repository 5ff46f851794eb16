"""Rich progress bars and spinners, written to stderr so stdout stays machine-readable.

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
