"""The command line as the ecosystem's best CLIs print it, whatever typer's version does.

typer 0.29 shows ``<str>``/``<path>`` after every option, ``<bool>`` after flags that take no
value, and required arguments as ``{prompt}``. :func:`tidy` gives every parameter a plain
metavar instead (``TEXT``, ``PATH``, ``INTEGER``, ``FLOAT``, nothing for flags, ``PROMPT``)
by walking the built click command; ``tests/test_cli_help.py`` renders every command's help
and fails when an upgrade changes what this relies on. :func:`quiet_backend_notices` drops
transformers' notice that torchvision is missing (we use no torchvision image processor;
the notice was printed twice by every command).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["quiet_backend_notices", "tidy"]

#: Python types (typer's annotation of the parameter) -> the metavar shown; ranges print
#: their bounds beside it.
_METAVARS = {int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}


def _commands(command: Any) -> Iterator[Any]:
    yield command
    for sub in getattr(command, "commands", {}).values():
        yield from _commands(sub)


def _metavar(param: Any) -> str:
    desc = param.type_descriptor
    if desc.is_choice:
        return "[" + "|".join(str(c) for c in desc.choices or ()) + "]"
    if desc.is_path:
        return "PATH"
    annotation = desc.annotation
    if desc.is_list:
        (annotation,) = getattr(annotation, "__args__", (str,))
    return _METAVARS.get(annotation, "PATH" if annotation is Path else "TEXT")


def _argument_usage(param: Any) -> str:
    name = str(param.metavar).removesuffix("...")
    return (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")


def _tidy_param(param: Any) -> None:
    if param.param_type_name == "argument":
        param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
        param._usage_display_name = types.MethodType(_argument_usage, param)
        param.display_type_rich = lambda ctx: None  # the name says it: PROMPT, FILE
    elif getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""
    elif param.metavar is None:
        param.metavar = _metavar(param)


def _tidy_help_option(cmd: Any) -> None:
    """``--help`` is made per context by click: tidy each one it makes."""
    make = cmd.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None:
            _tidy_param(option)
        return option

    cmd.get_help_option = get_help_option


def tidy(command: Any) -> Any:
    """Set plain metavars on every parameter of ``command`` and its subcommands."""
    for cmd in _commands(command):
        for param in cmd.params:
            _tidy_param(param)
        _tidy_help_option(cmd)
    return command


class _NoTorchvisionNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


def quiet_backend_notices() -> None:
    """Drop transformers' torchvision-fallback notice (a backend this project never uses)."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_NoTorchvisionNotice())
