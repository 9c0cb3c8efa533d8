"""``safety-lora demo``: the embedded model with and without the safety layer, as a PNG grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from safety_lora.progress import progress_bar


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for grid.png and decisions.json.")
    ] = Path("out/demo"),
) -> None:
    """Show the whole layer on the embedded concept-world model (red stands in for unsafe).

    Rows: steering alone suffices; the classifier catches what steering missed (regenerate,
    then replace); a benign prompt untouched; a refused prompt.
    """
    import torch

    from safety_lora.demo import DEMO_ROWS, run_demo, verdict

    torch.set_num_threads(1)  # a tiny model: one thread beats many on a small CPU
    console = Console()
    with progress_bar() as progress:
        task = progress.add_task("generating", total=len(DEMO_ROWS))
        rows = run_demo(out, progress=lambda n: progress.advance(task, n))
    table = Table(title="safety layer on the concept-world model (red stands in for unsafe)")
    for column in ("prompt", "seed", "verdict", "rule", "strengths"):
        table.add_column(column)
    for row in rows:
        d = row.decision
        strengths = " -> ".join(f"{max(s.values(), default=0):.2f}" for s in d.steering_scales)
        table.add_row(row.prompt, str(row.seed), verdict(d), d.rule, strengths or "-")
    console.print(table)
    console.print(f"wrote {out / 'grid.png'} and {out / 'decisions.json'}")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command."""
    app.command("demo")(demo)
