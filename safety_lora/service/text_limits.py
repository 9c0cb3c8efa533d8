"""How much text a request may carry: characters per text, texts and content parts per request.

Two layers, both answered with the 400 error envelope before any classifier runs. The request
models refuse anything over the ceilings while parsing, with an O(1) ``len`` check that runs
before any item is validated, so a 16 MB string or 100,000 parts cost no more than their JSON
parse. The routes then hold every text to this server's settings (``max_text_chars``,
``max_texts``, ``max_parts``, at most the ceilings), naming the setting and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import Field

from safety_lora.service.errors import ServiceError

__all__ = [
    "ITEMS_CEILING",
    "TEXT_CHARS_CEILING",
    "BoundedText",
    "bounded_input",
    "check_count",
    "check_texts",
]

#: The most characters any server accepts in one text (``max_text_chars`` is at most this).
TEXT_CHARS_CEILING = 100_000
#: The most list items (texts, parts) any server accepts in one request field.
ITEMS_CEILING = 1024


def bounded_input(value: Any) -> Any:
    """A before-validator of a request's ``input``: refuse a string over
    :data:`TEXT_CHARS_CEILING` characters or a list over :data:`ITEMS_CEILING` items before
    pydantic validates any of its items."""
    if isinstance(value, str) and len(value) > TEXT_CHARS_CEILING:
        raise ValueError(
            f"{len(value)} characters, over the {TEXT_CHARS_CEILING} any server accepts"
        )
    if isinstance(value, list) and len(value) > ITEMS_CEILING:
        raise ValueError(f"{len(value)} items, over the {ITEMS_CEILING} any server accepts")
    return value


#: A text in a request body (its characters counted in pydantic's core; the whole body is
#: bounded by ``max_body_bytes``).
BoundedText = Annotated[str, Field(max_length=TEXT_CHARS_CEILING)]


def check_texts(texts: Sequence[tuple[str, str]], max_chars: int) -> None:
    """Refuse (400) the first ``(field, text)`` longer than ``max_chars`` (``max_text_chars``)."""
    for field, text in texts:
        if len(text) > max_chars:
            raise ServiceError(
                400,
                "invalid_request_error",
                f"{field}: {len(text)} characters, over this server's limit of {max_chars} "
                f"(max_text_chars)",
            )


def check_count(field: str, count: int, limit: int, setting: str, what: str) -> None:
    """Refuse (400) ``count`` ``what`` in ``field`` when over ``limit`` (the setting named)."""
    if count > limit:
        raise ServiceError(
            400,
            "invalid_request_error",
            f"{field}: {count} {what}, over this server's limit of {limit} ({setting})",
        )
