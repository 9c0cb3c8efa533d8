"""``safety-lora demo``: the embedded model with and without the safety layer, as a PNG grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for grid.png and decisions.json.")
    ] = Path("out/demo"),
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per prompt.", min=1)] = 2,
) -> None:
    """Generate the demo grid on the embedded concept-world model (red stands in for unsafe)."""
    import torch

    from safety_lora.demo import DEMO_PROMPTS, run_demo

    torch.set_num_threads(1)  # a tiny model: one thread beats many on a small CPU
    console = Console()
    total = len(DEMO_PROMPTS) * seeds
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=total)
        rows = run_demo(out, seeds=range(seeds), progress=lambda n: progress.advance(task, n))
    table = Table(title="safety layer on the concept-world model (red = unsafe)")
    for column in ("prompt", "seed", "action", "rule", "attempts", "strengths"):
        table.add_column(column)
    for row in rows:
        d = row.decision
        strengths = " -> ".join(f"{max(s.values(), default=0):.2f}" for s in d.steering_scales)
        table.add_row(
            row.prompt, str(row.seed), d.action.value, d.rule, str(d.attempts), strengths or "-"
        )
    console.print(table)
    console.print(f"wrote {out / 'grid.png'} and {out / 'decisions.json'}")


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command."""
    app.command("demo")(demo)
