"""The ``workbench`` extra's check, run by every workbench command before it loads anything."""

from __future__ import annotations

import importlib.util

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["require_workbench"]

#: The modules the ``workbench`` extra installs (importable names).
EXTRA_MODULES = ("matplotlib",)


def require_workbench(command: str) -> None:
    """Exit with the exact install hint when the ``workbench`` extra is missing."""
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        Console(stderr=True).print(
            "[red]✗[/red] "
            + escape(
                f"`safety-lora {command}` needs the workbench extra ({', '.join(missing)} is "
                f"not installed): pip install 'safety-lora[workbench]'"
            ),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=2)
