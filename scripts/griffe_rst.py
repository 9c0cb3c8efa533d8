"""A griffe extension: the project's docstrings use reST roles (``:class:`~a.B```) and double
backticks; the API reference renders Markdown, so both become code spans there."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")
_DOUBLE = re.compile(r"``([^`]+)``")


def _role(match: re.Match[str]) -> str:
    """``:class:`~a.B``` -> `B`; ``:func:`a.b``` -> `a.b`."""
    tilde, name = match.groups()
    return f"`{name.rsplit('.', 1)[-1] if tilde else name}`"


def _markdown(text: str) -> str:
    return _DOUBLE.sub(r"`\1`", _ROLE.sub(_role, text))


class RestRoles(griffe.Extension):
    """Rewrite every docstring's reST roles and double backticks as Markdown code spans."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _markdown(obj.docstring.value)
