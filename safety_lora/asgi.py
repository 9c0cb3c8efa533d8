"""The raw-ASGI pieces the middleware and the service's gate share (no web framework needed).

One body reader (its limit, the declared ``content-length``, a client that goes away), one
replay of a read body to the app, one JSON sender and one error envelope, so both entry
points treat the same request the same way.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = [
    "ASGIApp",
    "BodyTooLarge",
    "ClientDisconnected",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "error_envelope",
    "read_body",
    "replay",
    "send_json",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body is over the limit (known from ``content-length`` or while reading)."""


class ClientDisconnected(Exception):
    """The client went away before its request body was complete."""


async def read_body(receive: Receive, limit: int, content_length: bytes | None = None) -> bytes:
    """The whole request body; :class:`BodyTooLarge` as soon as it is known to exceed ``limit``
    bytes (a declared ``content_length`` over it: before any byte is read),
    :class:`ClientDisconnected` when the client leaves first (never a partial body).
    """
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise BodyTooLarge(f"request body over the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected("the client went away")
        chunk = bytes(message.get("body", b""))
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body over the limit of {limit} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app ``body`` whole, then whatever the client sends next
    (its disconnect, which cancellation watches)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def error_envelope(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The one error body of the middleware and the service, in OpenAI's shape:
    ``{"error": {"message", "type", "param", "code", ...extra}}``."""
    return {"error": {"message": message, "type": code, "param": None, "code": code, **extra}}


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]]
) -> None:
    """Send a whole JSON response on a raw ASGI ``send``."""
    data = json.dumps(body).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data, "more_body": False})
