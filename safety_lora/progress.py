"""The project's one rich progress-bar layout for long work (training, comparisons)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["progress_bar", "ticker"]


def progress_bar(*fields: str) -> Progress:
    """Description, bar, done/total, then ``fields`` (rich format strings), elapsed, remaining."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f) for f in fields),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )


@contextmanager
def ticker(enabled: bool, title: str, total: int) -> Iterator[Callable[[str], None]]:
    """``tick(label)``: one unit of ``total`` done, ``label`` shown (a no-op when disabled)."""
    if not enabled:
        yield lambda _: None
        return
    with progress_bar("{task.fields[label]}") as progress:
        task = progress.add_task(title, total=total, label="")
        yield lambda label: progress.update(task, advance=1, label=label)
