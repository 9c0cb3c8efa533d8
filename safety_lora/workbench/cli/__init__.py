"""The workbench's commands (``train``, ``attack``, ``compare``), registered by the runtime CLI.

These modules import only typer and rich at load; each command imports the workbench when it
runs, after :func:`~safety_lora.workbench.cli.extra.require_workbench` has checked that
the ``workbench`` extra is installed.
"""

from __future__ import annotations

import typer

from safety_lora.workbench.cli import attack, compare, train

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add the workbench's commands to ``app``."""
    for module in (attack, compare, train):
        module.register(app)
