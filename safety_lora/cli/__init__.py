"""The ``safety-lora`` command line: one module per command group, registered here."""

from __future__ import annotations

from typing import Any

import typer

from safety_lora.cli import (
    adapters,
    attack,
    audit,
    compare,
    demo,
    erase,
    generate,
    moderate,
    policy,
    serve,
    train,
)
from safety_lora.cli.help import quiet_backend_notices, tidy

app = typer.Typer(
    name="safety-lora",
    help="Content-safety control layer for diffusion pipelines.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
for module in (
    adapters,
    attack,
    audit,
    compare,
    demo,
    erase,
    generate,
    moderate,
    policy,
    serve,
    train,
):
    module.register(app)


def command() -> Any:
    """The click command the console script runs: typer's, with tidy help."""
    return tidy(typer.main.get_command(app))


def main() -> None:
    """Console-script entry point."""
    quiet_backend_notices()
    command()()
