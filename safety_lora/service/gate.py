"""The service's front gate (pure ASGI): request ids, API keys, rate limit, body limit, admission.

Everything here runs before the app touches a request, so rejected requests cost almost
nothing: 401 (key), 429 (rate), 413 (body) and 503 (queue full) are answered by the gate.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
from safety_lora.service.metrics import ServiceMetrics
from safety_lora.service.settings import ServiceSettings, hash_api_key

__all__ = ["Admission", "Gate", "RateLimiter"]

logger = logging.getLogger("safety_lora.service")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Routes whose work is bounded by the admission queue.
WORK_ROUTES = frozenset(
    {
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/moderations",
        "/v1/moderations/image",
        "/v1/moderations/prompt",
    }
)
KNOWN_ROUTES = WORK_ROUTES | {"/v1/policy", "/healthz", "/metrics", "/docs", "/openapi.json"}


class Busy(Exception):
    """The admission queue is full."""


class Admission:
    """At most ``concurrency`` requests at work, ``queue_size`` more waiting, the rest refused."""

    def __init__(self, concurrency: int, queue_size: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._capacity = concurrency + queue_size
        self.admitted = 0
        self.active = 0

    @property
    def queued(self) -> int:
        """Requests admitted but still waiting for a worker slot."""
        return self.admitted - self.active

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a worker slot; raises :class:`Busy` at once when the queue is full."""
        if self.admitted >= self._capacity:
            raise Busy
        self.admitted += 1
        try:
            async with self._slots:
                self.active += 1
                try:
                    yield
                finally:
                    self.active -= 1
        finally:
            self.admitted -= 1


class RateLimiter:
    """A token bucket per key: ``per_minute`` refill, ``burst`` capacity (0 per minute: off)."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """0.0 when a request may go ahead, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class Gate:
    """Wraps the FastAPI app; the request id is put in ``scope["state"]["request_id"]``."""

    def __init__(
        self,
        app: ASGIApp,
        settings: ServiceSettings,
        metrics: ServiceMetrics,
        admission: Admission,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.admission = admission
        self.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
        self._keys = [k.encode() for k in settings.api_keys]
        self._reviewer_keys = [k.encode() for k in settings.reviewer_keys]
        self._public = frozenset(settings.public_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Give an HTTP request its id (a well-formed ``X-Request-Id``, else a new one; echoed on
        the response), check the key (every route but ``/healthz`` and ``public_routes``), then
        rate, body size and admission on ``/v1/`` routes, count it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else "other"
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self._handle(scope, receive, send_with_id, headers, route)
        finally:
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: dict[bytes, bytes],
        route: str,
    ) -> None:
        path = scope["path"]
        if path == "/healthz" or path in self._public:  # probes; what the settings make public
            await self.app(scope, receive, send)
            return
        if path == "/review":  # the reviewer page: no data; it asks for a reviewer key
            await self.app(scope, receive, send)
            return
        reviewing = bool(self._reviewer_keys) and path.startswith("/v1/review/")
        key = self._authenticate(headers, self._reviewer_keys if reviewing else self._keys)
        if key is None:
            self.metrics.rejected.labels(reason="auth").inc()
            await _error(
                send,
                401,
                "invalid_api_key",
                "missing or wrong API key (Authorization: Bearer)",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if not path.startswith("/v1/"):  # docs and metrics: keyed, not rate-limited
            await self.app(scope, receive, send)
            return
        wait = self.limiter.take(key)
        if wait > 0:
            self.metrics.rejected.labels(reason="rate").inc()
            await _error(
                send,
                429,
                "rate_limit_exceeded",
                f"rate limit reached; retry in {wait:.1f} s",
                [(b"retry-after", str(math.ceil(wait)).encode())],
            )
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            limit = self.settings.max_body_bytes
            try:
                body = await read_body(receive, limit, headers.get(b"content-length"))
            except BodyTooLarge as e:
                self.metrics.rejected.labels(reason="body_limit").inc()
                await _error(send, 413, "request_too_large", str(e))
                return
            except ClientDisconnected:
                return  # nobody to answer, nothing to run
            receive = replay(body, receive)
        if route not in WORK_ROUTES:
            await self.app(scope, receive, send)
            return
        try:
            async with self.admission.slot():
                self._gauges()
                try:
                    await self.app(scope, receive, send)
                finally:
                    self._gauges()
        except Busy:
            self.metrics.rejected.labels(reason="busy").inc()
            await _error(
                send,
                503,
                "server_busy",
                "too many requests in progress; retry shortly",
                [(b"retry-after", b"1")],
            )
        finally:
            self._gauges()

    def _gauges(self) -> None:
        self.metrics.in_flight.set(self.admission.active)
        self.metrics.queued.set(self.admission.queued)

    def _authenticate(self, headers: dict[bytes, bytes], keys: list[bytes]) -> str | None:
        """The id of the key among ``keys`` given, for rate limiting ("open" without keys),
        None when refused."""
        if not keys:
            return "open"
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hash_api_key(token.strip()).encode()
        # Compare against every key (no early exit) so timing says nothing about which matched.
        matched = [hmac.compare_digest(digest, k) for k in keys]
        return digest.decode()[:16] if any(matched) else None


async def _error(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await send_json(send, status, error_envelope(code, message), headers or [])
