"""The ``safety-lora`` command line: one module per command group, registered here.

The workbench's commands come from :mod:`safety_lora.workbench.cli`, the one place the
runtime reaches into the workbench (their modules load nothing heavy until they run).
"""

from __future__ import annotations

from typing import Any

import typer

from safety_lora.cli import (
    adapters,
    audit,
    demo,
    erase,
    generate,
    moderate,
    policy,
    provenance,
    serve,
)
from safety_lora.cli.help import quiet_backend_notices, tidy
from safety_lora.workbench.cli import register as register_workbench

app = typer.Typer(
    name="safety-lora",
    help="Content-safety control layer for diffusion pipelines.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
for module in (adapters, audit, demo, erase, generate, moderate, policy, provenance, serve):
    module.register(app)
register_workbench(app)  # its commands load the workbench (and check its extra) when run


def command() -> Any:
    """The click command the console script runs: typer's, with tidy help."""
    return tidy(typer.main.get_command(app))


def main() -> None:
    """Console-script entry point."""
    quiet_backend_notices()
    command()()
