"""The ``workbench`` extra's check, run by every workbench command before it loads anything."""

from __future__ import annotations

import importlib.util

import typer

from safety_lora.console import print_error

__all__ = ["require_workbench"]

#: The modules the ``workbench`` extra installs (importable names).
EXTRA_MODULES = ("matplotlib",)


def require_workbench(command: str) -> None:
    """Exit with the exact install hint when the ``workbench`` extra is missing."""
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        print_error(
            f"`safety-lora {command}` needs the workbench extra ({', '.join(missing)} is not "
            f"installed): pip install 'safety-lora[workbench]'"
        )
        raise typer.Exit(code=2)
