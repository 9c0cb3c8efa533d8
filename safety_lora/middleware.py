"""``SafetyMiddleware``: pure ASGI middleware moderating an existing app's generation routes.

For a configured route (path pattern + methods) the request's prompt is checked first (a
JSON field, or a form field of a multipart/urlencoded body; a refused prompt gets a 400 JSON
error carrying the decision; the app is not called). Then the images the request uploads
(:mod:`safety_lora.request_images`: multipart file parts, ``data:image/`` URLs in a JSON body
or a form, base64 strings at ``upload_fields``, an image body) are judged under the policy's
``inputs`` section before the app sees them, each audited as a line of kind ``input``: one the
policy refuses gets the same 400 ``content_policy_violation`` as a refused prompt (its
``decision`` and ``param`` name the upload) and the app is not called; one it would blur or
replace is rewritten in the body as so rendered (re-encoded in its own format, the
``content-length`` adjusted), so the app generates from what the policy lets through, as
``SafePipeline`` does; an upload that cannot be decoded is a 400 ``invalid_image``. Then the
app's response is judged: an ``image/*`` body, or base64 images found in a JSON body at a
field path. Images the policy does not allow are replaced in place, re-encoded in their own
format. Every moderated response carries two headers: ``X-Safety-Decision``, the most severe
action taken (``refuse`` for a refused prompt or upload, else the worst action on an upload or
image, else the prompt's ``allow``/``steer``; ``error`` when the request was rejected before a
decision), and ``X-Safety-Request-Id``, the id of its audit lines; a response with images a
review band held for a person also carries ``X-Safety-Review-Ids`` (their review ids, in order,
comma-separated; each held image comes back as the band's interim action). Any other route, and
websocket/lifespan traffic, goes to the app untouched and unbuffered (streaming included).

Field paths are dotted (``"input.text"``); ``*`` matches every item of a list or mapping
(``"data.*.b64_json"``), a number indexes a list.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safety_lora.asgi import (
    ASGIApp,
    BodyTooLarge,
    ClientDisconnected,
    Message,
    Receive,
    Scope,
    Send,
    error_envelope,
    read_body,
    replay,
    send_json,
)
from safety_lora.decisions import Decision, PromptDecision, new_request_id
from safety_lora.guard import PromptRefused, SafetyGuard
from safety_lora.image_codec import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_b64_image,
    decode_image,
    encode_image,
)
from safety_lora.policies.schema import Policy
from safety_lora.request_images import RequestBody, RequestImageError, locate, parse_body
from safety_lora.taxonomy import ACTION_SEVERITY, Action

__all__ = ["ASGIApp", "GuardedRoute", "SafetyMiddleware"]

#: The response header listing the review ids of the images held for a person.
REVIEW_HEADER = b"x-safety-review-ids"


@dataclass(frozen=True)
class GuardedRoute:
    """A route to moderate: ``path`` is a glob (``fnmatch``) on the request path.

    ``prompt_field`` is where the prompt sits in the JSON request body, or the form field
    holding it (None: no prompt check); ``images_field`` is where base64 images sit in a JSON
    response body; ``upload_fields`` are where a request uploads base64 images without a
    ``data:`` prefix, as JSON field paths or form field names (``data:image/`` URLs and
    multipart files are judged wherever they are).
    """

    path: str
    methods: frozenset[str] = field(default_factory=lambda: frozenset({"POST"}))
    prompt_field: str | None = "prompt"
    images_field: str = "data.*.b64_json"
    upload_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"`path` must start with '/', got {self.path!r}")
        object.__setattr__(self, "methods", frozenset(m.upper() for m in self.methods))
        fields = self.upload_fields
        object.__setattr__(
            self, "upload_fields", (fields,) if isinstance(fields, str) else tuple(fields)
        )

    def matches(self, method: str, path: str) -> bool:
        """True when a request with ``method`` and ``path`` is moderated by this route."""
        return method.upper() in self.methods and fnmatch.fnmatchcase(path, self.path)


class _Reject(Exception):
    """A request the middleware answers itself with ``status`` and a JSON error."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


class SafetyMiddleware:
    """Wraps ``app``; ``guard`` is a :class:`SafetyGuard`, a :class:`Policy`, preset or file.

    ``max_body_bytes`` bounds the moderated request bodies it buffers (413 beyond it);
    ``max_image_pixels`` bounds each uploaded and response image it decodes;
    ``max_upload_images`` the images one request may upload (400 beyond it).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: SafetyGuard | Policy | str | Path,
        routes: Sequence[GuardedRoute],
        max_body_bytes: int = 10 * 1024 * 1024,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        max_upload_images: int = 16,
        header: str = "X-Safety-Decision",
        request_id_header: str = "X-Safety-Request-Id",
    ) -> None:
        if not routes:
            raise ValueError("`routes` is empty: the middleware would moderate nothing")
        if max_body_bytes < 1:
            raise ValueError(f"`max_body_bytes` must be >= 1, got {max_body_bytes}")
        if max_upload_images < 0:
            raise ValueError(f"`max_upload_images` must be >= 0, got {max_upload_images}")
        self.app = app
        self.guard = guard if isinstance(guard, SafetyGuard) else SafetyGuard(guard)
        self.routes = tuple(routes)
        self.max_body_bytes = max_body_bytes
        self.max_image_pixels = max_image_pixels
        self.max_upload_images = max_upload_images
        self.header = header.lower().encode("latin-1")
        self.request_id_header = request_id_header.lower().encode("latin-1")

    def _headers(self, action: str, request_id: str) -> list[tuple[bytes, bytes]]:
        return [(self.header, action.encode()), (self.request_id_header, request_id.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Moderate a request on a guarded route (its prompt, its uploads, then the images in the
        app's response) and add the decision headers; anything else goes to the app untouched."""
        route = self._route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        request_id = new_request_id()
        try:
            await self._moderate(route, request_id, scope, receive, send)
        except _Reject as e:
            body = error_envelope(e.code, str(e), **e.extra)
            action = "refuse" if e.code == "content_policy_violation" else "error"
            await send_json(send, e.status, body, self._headers(action, request_id))

    def _route(self, scope: Scope) -> GuardedRoute | None:
        if scope["type"] != "http":
            return None
        method, path = scope["method"], scope["path"]
        return next((r for r in self.routes if r.matches(method, path)), None)

    async def _moderate(
        self, route: GuardedRoute, request_id: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        try:
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge as e:
            raise _Reject(413, "body_too_large", str(e)) from e
        except ClientDisconnected as e:
            raise _Reject(400, "client_disconnected", str(e)) from e
        content_type = next(
            (bytes(v) for k, v in scope.get("headers", []) if bytes(k).lower() == b"content-type"),
            b"",
        ).decode("latin-1")
        parsed = await asyncio.to_thread(_parse, body, content_type, route.upload_fields)
        pd, prompt = None, None
        if route.prompt_field is not None:
            prompt = _prompt_from(parsed, route.prompt_field)
            pd = await asyncio.to_thread(self.guard.check_prompt, prompt, request_id=request_id)
            if pd.refused:
                raise _Reject(
                    400,
                    "content_policy_violation",  # as OpenAI's API, which clients branch on
                    str(PromptRefused(pd)),
                    decision=pd.to_dict(),
                )
        verdicts = await asyncio.to_thread(self._judge_uploads, parsed, prompt, pd, request_id)
        if parsed.changed:
            body = parsed.dump()
            scope = _with_length(scope, len(body))
        start: Message | None = None
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        await self.app(scope, replay(body, receive), capture)
        if start is None:
            raise RuntimeError("the app returned without starting a response")
        out = b"".join(chunks)
        status = int(start["status"])
        headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
        decisions: list[Decision] = []
        if 200 <= status < 300:
            out, decisions = await self._judge_response(route, headers, out, pd, request_id)
        ours = (b"content-length", self.header, self.request_id_header, REVIEW_HEADER)
        headers = [(k, v) for k, v in headers if k.lower() not in ours]
        headers += [(b"content-length", str(len(out)).encode())]
        headers += self._headers(_worst([*verdicts, *decisions], pd), request_id)
        held = [d.review_id for d in decisions if d.held]
        if held:
            headers.append((REVIEW_HEADER, ",".join(held).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out, "more_body": False})

    def _judge_uploads(
        self, parsed: RequestBody, prompt: str | None, pd: PromptDecision | None, request_id: str
    ) -> list[Decision]:
        """Judge the request's uploads (audited, kind ``input``): refuse the request for one the
        policy refuses, rewrite those it blurs or replaces; their verdicts."""
        try:
            uploads = parsed.uploads(
                max_images=self.max_upload_images, max_pixels=self.max_image_pixels
            )
        except RequestImageError as e:
            raise _Reject(400, e.code, str(e), param=e.param) from e
        if not uploads:
            return []
        verdicts = self.guard.check_inputs(
            [(upload.name, upload.decoded.image) for upload in uploads],
            prompt=prompt,
            prompt_decision=pd,
            request_id=request_id,
        )
        pairs = list(zip(uploads, verdicts, strict=True))
        for upload, verdict in pairs:
            if verdict.action is Action.BLOCK:
                reasons = "; ".join(verdict.reasons) or verdict.rule
                raise _Reject(
                    400,
                    "content_policy_violation",
                    f"upload {upload.name} refused by the safety policy ({verdict.rule}): "
                    f"{reasons}",
                    decision=verdict.to_dict(),
                    param=upload.name,
                )
        for upload, verdict in pairs:
            if verdict.action is not Action.ALLOW:
                upload.replace(self.guard.render(upload.decoded.image, verdict))
        return verdicts

    async def _judge_response(
        self,
        route: GuardedRoute,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        pd: PromptDecision | None,
        request_id: str,
    ) -> tuple[bytes, list[Decision]]:
        """The response body as the policy lets it through, and the images' decisions."""
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        media = content_type.split(b";")[0].strip().lower()
        try:
            if media.startswith(b"image/"):
                return await asyncio.to_thread(self._judge_image_body, body, pd, request_id)
            if media == b"application/json" or media.endswith(b"+json"):
                return await asyncio.to_thread(self._judge_json_body, route, body, pd, request_id)
        except ImageDecodeError as e:
            # Fail closed: an image we cannot judge is not passed on.
            raise _Reject(502, "unjudgeable_image", f"response image cannot be judged: {e}") from e
        return body, []

    def _judge_image_body(
        self, body: bytes, pd: PromptDecision | None, request_id: str
    ) -> tuple[bytes, list[Decision]]:
        decoded = decode_image(body, max_pixels=self.max_image_pixels)
        result = self.guard.moderate([decoded.image], prompt_decision=pd, request_id=request_id)
        if result.decisions[0].action is Action.ALLOW:
            return body, result.decisions
        return encode_image(result.images[0], decoded.format), result.decisions

    def _judge_json_body(
        self, route: GuardedRoute, body: bytes, pd: PromptDecision | None, request_id: str
    ) -> tuple[bytes, list[Decision]]:
        try:
            document = json.loads(body)
        except ValueError as e:
            raise ImageDecodeError(f"response is not valid JSON: {e}") from e
        slots = locate(document, route.images_field.split("."))
        values = [container[key] for container, key in slots]
        bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
        if bad:
            raise ImageDecodeError(f"{route.images_field}: items {bad} are not base64 strings")
        if not slots:
            return body, []
        decoded = [decode_b64_image(v, max_pixels=self.max_image_pixels) for v in values]
        result = self.guard.moderate(
            [d.image for d in decoded], prompt_decision=pd, request_id=request_id
        )
        if all(d.action is Action.ALLOW for d in result.decisions):
            return body, result.decisions
        for (container, key), d, image, decision in zip(
            slots, decoded, result.images, result.decisions, strict=True
        ):
            if decision.action is not Action.ALLOW:
                encoded = encode_image(image, d.format)
                container[key] = d.data_url_prefix + _b64(encoded)
        return json.dumps(document).encode("utf-8"), result.decisions


def _worst(decisions: Sequence[Decision], pd: PromptDecision | None) -> str:
    """The header's action: the most severe image action, else the prompt's."""
    if decisions:
        return max((d.action for d in decisions), key=ACTION_SEVERITY.__getitem__).value
    return pd.action.value if pd is not None else Action.ALLOW.value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _parse(body: bytes, content_type: str, fields: Sequence[str]) -> RequestBody:
    """The request body read for its prompt and uploads; a body that cannot be is a 400."""
    try:
        return parse_body(body, content_type, fields=fields)
    except RequestImageError as e:
        raise _Reject(400, e.code, str(e), param=e.param) from e


def _prompt_from(parsed: RequestBody, path: str) -> str:
    """The one prompt at ``path``: a JSON field path, or a form field's name."""
    if parsed.kind == "json":
        values = [container[key] for container, key in locate(parsed.document, path.split("."))]
    elif parsed.kind == "form":
        values = list(parsed.text(path))
    else:
        raise _Reject(400, "invalid_json", "request body is not valid JSON")
    if len(values) != 1 or not isinstance(values[0], str):
        raise _Reject(
            400, "missing_prompt", f"request body needs one string at field {path!r} to check"
        )
    return values[0]


def _with_length(scope: Scope, length: int) -> Scope:
    """``scope`` with its ``content-length`` header (where it has one) set to ``length``."""
    headers = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
    if not any(k.lower() == b"content-length" for k, _ in headers):
        return scope
    own = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    return {**scope, "headers": [*own, (b"content-length", str(length).encode())]}
