"""``safety-lora erase``: solve a closed-form erasure adapter (UCE family) in seconds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from rich.console import Console
from rich.table import Table

from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.config_cli import CliField, ConfigArgs, add_config_command
from safety_lora.console import print_error

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
    config: ConfigArgs[ClosedFormConfig],
    out: Annotated[Path, typer.Option("--out", help="Adapter file to write (.safetensors).")],
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            help="CONCEPT=ANCHOR: the word that takes the concept's place in its anchor prompts "
            "('red=' removes it: 'a red circle' -> 'a circle'), token-aligned; replaces the "
            "file's anchors.",
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--format", help="peft, kohya or lycoris (default: lycoris exact, else peft)."
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Pipeline folder or hub id (default: the bundled concept-world model)."),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Solve a closed-form erasure of cross-attention keys/values; write it as an adapter."""
    from safety_lora.adapters import AdapterFormatError
    from safety_lora.closed_form import erase

    if to is not None and to not in ("peft", "kohya", "lycoris"):
        raise typer.BadParameter(
            f"must be peft, kohya or lycoris, got {to!r}", param_hint="--format"
        )
    anchors = {"anchors": parse_anchors(anchor, config.get("erase") or [])} if anchor else {}
    settings = config.validate(overrides=anchors)
    refine: Refine | None = None
    if settings.attack_rounds:  # made offline by the workbench's attack harness
        from safety_lora.workbench.cli.extra import require_workbench

        require_workbench("erase --attack-rounds")
        from safety_lora.workbench.hardening import harden as refine
    try:
        fmt = cast("FormatName | None", to)
        result = erase(settings, out=out, base=base, to=fmt, device=device, refine=refine)
    except AdapterFormatError as e:
        print_error(f"{e}")
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
    add_config_command(
        app,
        "erase",
        erase,
        model=ClosedFormConfig,  # no torch: its options are built with the app's
        exclude=("anchors",),  # --anchor CONCEPT=ANCHOR, checked against the concepts
        fields={"templates": CliField("--template"), "lam": CliField("--lambda")},
    )
