"""``safety-lora policy validate|schema``: check policy files, export the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from safety_lora.policies.schema import Policy, PolicyError

policy_app = typer.Typer(
    help="Validate policy files and export their JSON Schema.", no_args_is_help=True
)


@policy_app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="Policy files (YAML or JSON) to check.")],
) -> None:
    """Validate each FILE; print every problem with its path inside the file and the bad value."""
    out, err = Console(), Console(stderr=True)
    failed = 0
    for path in files:
        try:
            policy = Policy.from_file(path)
        except PolicyError as e:
            failed += 1
            err.print(f"[red]✗[/red] {e}", highlight=False, soft_wrap=True)
        else:
            unjudged = ", ".join(c.value for c in policy.unjudged_images()) or "none"
            out.print(
                f"[green]✓[/green] {path}: policy {policy.name!r} is valid; not judged on "
                f"images: {unjudged}",
                highlight=False,
                soft_wrap=True,
            )
    if failed:
        raise typer.Exit(code=1)


@policy_app.command("schema")
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print the policy JSON Schema (point your editor's YAML/JSON schema setting at it)."""
    text = json.dumps(Policy.model_json_schema(), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


def register(app: typer.Typer) -> None:
    """Add the ``policy`` command group."""
    app.add_typer(policy_app, name="policy")
