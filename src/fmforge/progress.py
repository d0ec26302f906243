"""Progress bars and console output shared by every stage (rich, on stderr so
stdout stays clean for results such as `fmforge generate`)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Under torchrun only rank 0 prints (see _is_main_process below).
console = Console(stderr=True, quiet=os.environ.get("RANK", "0") not in ("", "0"))


def _is_main_process() -> bool:
    # Under torchrun only rank 0 speaks; the others would repeat every line.
    return os.environ.get("RANK", "0") in ("", "0")


def _disabled() -> bool:
    return os.environ.get("FMFORGE_NO_PROGRESS") == "1" or not _is_main_process()


@contextlib.contextmanager
def progress_bar(description: str, total: float | None, unit: str = "") -> Iterator["Bar"]:
    """``with progress_bar("encoding", total=n) as bar: bar.advance(k); bar.set(extra)``."""
    prog = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn() if unit == "" else TextColumn("{task.completed:,.0f}/{task.total:,.0f} " + unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
        disable=_disabled() or not sys.stderr.isatty() and os.environ.get("FMFORGE_FORCE_PROGRESS") != "1",
    )
    with prog:
        task = prog.add_task(description, total=total, info="")
        yield Bar(prog, task)


class Bar:
    def __init__(self, prog: Progress, task):
        self._prog, self._task = prog, task

    def advance(self, n: float = 1) -> None:
        self._prog.advance(self._task, n)

    def update(self, completed: float | None = None, info: str | None = None) -> None:
        kw = {}
        if completed is not None:
            kw["completed"] = completed
        if info is not None:
            kw["info"] = info
        self._prog.update(self._task, **kw)

    def set_total(self, total: float) -> None:
        self._prog.update(self._task, total=total)


def log(message: str) -> None:
    """A line of stage output (not a result); goes to stderr, from rank 0 only."""
    if _is_main_process():
        console.print(message, highlight=False)
