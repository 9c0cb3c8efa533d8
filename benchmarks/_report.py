"""A benchmark's results file: every table it prints, with the command, machine and date.

The documentation's benchmark pages are generated from these files
(``benchmarks/results/<name>.json``), so a number on the site is always one a run printed.
A benchmark makes one :class:`Report`, builds its tables with :meth:`Report.table` (each is
also a rich table to print) and calls :meth:`Report.write` at the end; :func:`add_arguments`
gives it the ``--results PATH`` / ``--no-results`` options and :meth:`Report.save` honours
them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.table import Table

__all__ = [
    "REQUIRED",
    "RESULTS",
    "Report",
    "ReportTable",
    "add_arguments",
    "command",
    "first_paragraph",
]

#: Where results files live (one per benchmark, rendered by scripts/docs_pages.py).
RESULTS = Path(__file__).parent / "results"
#: The top-level fields every results file has (the docs generator reads them).
REQUIRED = (
    "benchmark",
    "title",
    "description",
    "command",
    "started",
    "finished",
    "machine",
    "commit",
    "tables",
)

Justify = Literal["left", "right", "center"]


def first_paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring, its lines joined with single spaces."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ReportTable:
    """One printed table: its title, column headers and rows of cells as printed.

    ``justify`` is for the console only (one entry per column, or one for all; by default the
    first column left and the others right); the results file keeps the cells as printed.
    """

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    justify: Sequence[Justify] | Justify | None = None

    def __post_init__(self) -> None:
        if isinstance(self.justify, list | tuple) and len(self.justify) != len(self.columns):
            raise ValueError(
                f"{self.title}: {len(self.justify)} justifications for {len(self.columns)} columns"
            )

    def add_row(self, *cells: Any) -> None:
        """Add a row (cells formatted as the benchmark prints them)."""
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def note(self, text: str) -> None:
        """A sentence printed under the table (what a column means, what was left out, the
        conclusion a run printed)."""
        self.notes.append(text)

    def column_justify(self, i: int) -> Justify:
        """How column ``i`` is aligned on the console."""
        if self.justify is None:
            return "left" if i == 0 else "right"
        if isinstance(self.justify, str):
            return self.justify
        return self.justify[i]

    def rich(self) -> Table:
        """The table for the console (its notes so far as the caption)."""
        table = Table(title=self.title, caption=" ".join(self.notes) or None)
        for i, column in enumerate(self.columns):
            table.add_column(column, justify=self.column_justify(i))
        for row in self.rows:
            table.add_row(*row)
        return table

    def to_json(self) -> dict[str, Any]:
        """The table as the results file holds it."""
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "notes": self.notes,
        }


@dataclass
class Report:
    """A benchmark run's tables and where they came from."""

    name: str
    title: str
    description: str
    tables: list[ReportTable] = field(default_factory=list)
    started: str = field(default_factory=_now)
    load_at_start: float = field(default_factory=lambda: os.getloadavg()[0])

    def table(
        self,
        title: str,
        columns: Sequence[str],
        justify: Sequence[Justify] | Justify | None = None,
    ) -> ReportTable:
        """A new table of this report (``justify``: see :class:`ReportTable`)."""
        table = ReportTable(
            title,
            list(columns),
            justify=list(justify) if isinstance(justify, list | tuple) else justify,
        )
        self.tables.append(table)
        return table

    def add(self, table: ReportTable) -> ReportTable:
        """Add a table made apart (the results file keeps the tables in the order added)."""
        self.tables.append(table)
        return table

    def payload(self) -> dict[str, Any]:
        """The results file's content."""
        return {
            "benchmark": self.name,
            "title": self.title,
            "description": self.description,
            "command": command(sys.argv),
            "started": self.started,
            "finished": _now(),
            "machine": _machine(self.load_at_start),
            "commit": _commit(),
            "tables": [t.to_json() for t in self.tables],
        }

    def write(self, path: Path | None = None) -> Path:
        """Write the results file (default ``benchmarks/results/<name>.json``); written to a
        temporary file first, so a reader never sees half of one."""
        path = path or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(json.dumps(self.payload(), indent=1) + "\n", encoding="utf-8")
        partial.replace(path)
        return path

    def save(self, args: argparse.Namespace) -> Path | None:
        """Write the results file where :func:`add_arguments`' options say, and say where."""
        if args.no_results:
            return None
        path = self.write(args.results)
        print(f"results: {_shown(path)}", file=sys.stderr)
        return path


def command(argv: Sequence[str]) -> str:
    """The command that reruns the benchmark, as ``python benchmarks/NAME.py ARGS``; where the
    results file went (``--results PATH``) is left out: it changes no number."""
    args, rest = [], list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if arg == "--results":
            rest = rest[1:]
        elif not arg.startswith("--results="):
            args.append(arg)
    return "python " + shlex.join(["benchmarks/" + Path(argv[0]).name, *args])


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """``--results PATH`` (default ``benchmarks/results/<name>.json``) and ``--no-results``."""
    default = RESULTS / f"{name}.json"
    parser.add_argument(
        "--results",
        type=Path,
        default=default,
        metavar="PATH",
        help=f"write the printed tables here (default: {_shown(default)})",
    )
    parser.add_argument("--no-results", action="store_true", help="do not write a results file")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _machine(load_at_start: float) -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
    }


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None
