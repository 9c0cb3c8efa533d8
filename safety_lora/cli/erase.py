"""``safety-lora erase``: solve a closed-form erasure adapter (UCE family) in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the solver imports torch: only on use, keeping --help fast
    from safety_lora.adapters import FormatName
    from safety_lora.closed_form.files import Refine

__all__ = ["register"]


def parse_anchors(values: list[str], concepts: list[str]) -> dict[str, str]:
    """``CONCEPT=ANCHOR`` options as a dict; each concept must be one given with ``--erase``."""
    out: dict[str, str] = {}
    for value in values:
        concept, sep, anchor = value.partition("=")
        if not sep or concept not in concepts:
            raise typer.BadParameter(
                f"expected CONCEPT=ANCHOR with CONCEPT one of {concepts}, got {value!r}",
                param_hint="--anchor",
            )
        out[concept] = anchor
    return out


def erase(
    concept: Annotated[
        list[str], typer.Option("--erase", help="Concept to erase (repeat for several).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Adapter file to write (.safetensors).")],
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            help="CONCEPT=ANCHOR: the word that takes the concept's place in its anchor prompts "
            "('red=' removes it: 'a red circle' -> 'a circle'), token-aligned.",
        ),
    ] = None,
    guide: Annotated[
        str,
        typer.Option(
            help="Anchor word for concepts without --anchor (UCE's guide concept); '' (the "
            "default) removes the concept."
        ),
    ] = "",
    template: Annotated[
        list[str] | None,
        typer.Option("--template", help="Prompt template with {} for the concept (default {})."),
    ] = None,
    preserve: Annotated[
        list[str] | None,
        typer.Option("--preserve", help="Prompt whose keys and values must not change (repeat)."),
    ] = None,
    push: Annotated[
        float,
        typer.Option(
            help="0: UCE's form (the concept takes the anchor's values); ETA > 0: ESD's target "
            "a - ETA (c - a), past the anchor."
        ),
    ] = 0.0,
    rounds: Annotated[
        int, typer.Option(help="RECE rounds: re-solve with adversarial embeddings N times.")
    ] = 0,
    attack_rounds: Annotated[
        int,
        typer.Option(
            help="Harden against prompt attacks: N rounds that attack the edit with soft prompts "
            "and erase what they bring back (runs the UNet: minutes, not seconds)."
        ),
    ] = 0,
    rank: Annotated[
        int | None,
        typer.Option(help="LoRA rank (truncated SVD, error reported); default: the exact delta."),
    ] = None,
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="LoRA of the smallest rank per module within this relative error (at most "
            "--rank when given)."
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--format", help="peft, kohya or lycoris (default: lycoris exact, else peft)."
        ),
    ] = None,
    lam: Annotated[float, typer.Option("--lambda", help="Pull toward the base weights.")] = 0.5,
    preserve_weight: Annotated[float, typer.Option(help="Weight of the preserve prompts.")] = 1.0,
    base: Annotated[
        str | None,
        typer.Option(help="Pipeline folder or hub id (default: the bundled concept-world model)."),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Solve a closed-form erasure of cross-attention keys/values; write it as an adapter."""
    from safety_lora.adapters import AdapterFormatError
    from safety_lora.closed_form import ClosedFormConfig, erase

    if to is not None and to not in ("peft", "kohya", "lycoris"):
        raise typer.BadParameter(
            f"must be peft, kohya or lycoris, got {to!r}", param_hint="--format"
        )
    try:
        config = ClosedFormConfig(
            erase=concept,
            templates=template or ["{}"],
            guide=guide,
            anchors=parse_anchors(anchor or [], concept),
            push=push,
            preserve=preserve or [],
            preserve_weight=preserve_weight,
            lam=lam,
            rounds=rounds,
            attack_rounds=attack_rounds,
            rank=rank,
            tolerance=tolerance,
        )
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from e
    refine: Refine | None = None
    if attack_rounds:  # made offline by the workbench's attack harness
        from safety_lora.workbench.cli.extra import require_workbench

        require_workbench("erase --attack-rounds")
        from safety_lora.workbench.hardening import harden as refine
    try:
        fmt = cast("FormatName | None", to)
        result = erase(config, out=out, base=base, to=fmt, device=device, refine=refine)
    except AdapterFormatError as e:
        Console(stderr=True).print(f"[red]✗[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from e
    table = Table(title=f"wrote {result.path}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("format / family", f"{result.format} / {result.family}")
    table.add_row("modules", str(result.modules))
    table.add_row("parameters", f"{result.parameters:,}")
    table.add_row("file size", f"{result.path.stat().st_size / 1024:.1f} KiB")
    table.add_row("solve", f"{result.seconds:.2f} s")
    exact = "exact" if result.family == "full" else f"{result.overall_error:.3e} (relative)"
    table.add_row("SVD error", exact)
    if result.adversarial_gaps:
        gaps = ", ".join(f"{g:.3f}" for g in result.adversarial_gaps)
        table.add_row("RECE gaps", gaps)
    table.add_row("solve key", result.key)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``erase`` command."""
    app.command("erase")(erase)
