"""One way the command line prints an error: a red mark, then the message as plain text.

Outside the `cli` package so the workbench's commands (which `safety_lora.cli` registers) can
import it at load without importing the CLI back.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

__all__ = ["print_error"]


def print_error(message: object, *, mark: str = "✗") -> None:
    """``✗ message`` on stderr; brackets in the message (``[nudenet]``, ``[sexual]``) are text,
    not rich markup, so install hints and category lists print whole."""
    Console(stderr=True).print(
        f"[red]{mark}[/red] " + escape(str(message)), highlight=False, soft_wrap=True
    )
