"""``ServiceError``: a request refused with a status and an OpenAI-shaped error envelope."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["ServiceError", "describe_errors"]


class ServiceError(Exception):
    """An error answered as ``{"error": {"message", "type", "code", ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


def describe_errors(errors: Iterable[Any]) -> str:
    """Pydantic validation errors as one message, ``field: problem; ...`` (the body's fields)."""
    return "; ".join(_describe(err) for err in errors)


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{loc or 'body'}: {err.get('msg', 'invalid')}"
