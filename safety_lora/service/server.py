"""Running the service: ``serve`` (blocking, the CLI's) and ``BackgroundServer`` (a thread).

Both serve HTTP/1.1 with uvicorn's h11 protocol under the connection limits of the settings
(:class:`GuardedH11Protocol`): request line and headers over ``max_header_bytes`` get a 431
(400 from h11 in corner cases) and the connection is closed, as soon as the bytes show it
and however they arrive; a request's headers
must arrive within ``header_timeout_s`` and its body within ``body_timeout_s`` (uvicorn has
no such timeout: a slow client is disconnected); at most ``max_connections`` are open (one
more gets a 503 and is closed at once: uvicorn's ``limit_concurrency`` would keep it open);
an idle keep-alive connection is closed after ``keep_alive_timeout_s``. WebSockets are off.

On shutdown (SIGINT/SIGTERM, or ``stop()``) the server stops accepting connections and the
app starts draining: new work gets 503, in-flight generations may finish within
``shutdown_timeout_s`` (less 2 s) and are stopped at their next denoising step after that,
so the process exits in bounded time; then the app's shutdown releases the model.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from safety_lora.asgi import error_envelope
from safety_lora.service.settings import ServiceSettings

__all__ = [
    "BackgroundServer",
    "BoundedConnection",
    "DrainingServer",
    "GuardedH11Protocol",
    "LimitedConfig",
    "fit_open_files",
    "serve",
]

#: Open files the process keeps for itself beside its connections (models, logs, the audit).
FD_RESERVE = 128
_BUSY_BODY = json.dumps(
    error_envelope("too_many_connections", "the server has too many open connections; retry")
).encode()
#: The end of a request head, as h11 finds it (a blank line, CRLF or bare LF).
_END_OF_HEAD = re.compile(rb"\n\r?\n")
#: What a connection over ``max_connections`` is sent before it is closed.
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n" % len(_BUSY_BODY)
) + _BUSY_BODY
_TOO_LARGE_BODY = json.dumps(
    error_envelope("request_header_too_large", "the request line and headers are too large")
).encode()
#: What a request whose head goes over ``max_header_bytes`` is sent before it is closed.
_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_TOO_LARGE_BODY)
) + _TOO_LARGE_BODY


class LimitedConfig(uvicorn.Config):
    """uvicorn's ``Config`` for ``app`` under the connection limits of ``settings``."""

    def __init__(self, app: Any, settings: ServiceSettings, **kwargs: Any) -> None:
        super().__init__(
            app,
            http=GuardedH11Protocol,
            ws="none",
            h11_max_incomplete_event_size=settings.max_header_bytes,
            timeout_keep_alive=settings.keep_alive_timeout_s,
            **kwargs,
        )
        self.service_settings = settings


class BoundedConnection(h11.Connection):
    """h11's server connection whose request head (line and headers) may be at most
    ``max_incomplete_event_size`` bytes however it arrives: h11 checks only a head still
    incomplete, so one that arrives whole in a single read (up to 256 KiB) would pass."""

    def next_event(self) -> Any:
        """h11's next event; a request whose head was over the limit raises h11's
        ``RemoteProtocolError`` (uvicorn answers 400 and closes)."""
        before = len(self._receive_buffer)  # h11 keeps no public count of what it consumed
        event = super().next_event()
        if isinstance(event, h11.Request):
            size = before - len(self._receive_buffer)
            if size > self._max_incomplete_event_size:
                raise h11.RemoteProtocolError(
                    f"request head of {size} bytes", error_status_hint=431
                )
        return event


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with what uvicorn lacks: a cap on open connections, and read
    deadlines (headers, then body), so slow or idle clients cannot hold file descriptors."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings = (
            config.service_settings if isinstance(config, LimitedConfig) else ServiceSettings()
        )
        self.conn = BoundedConnection(h11.SERVER, settings.max_header_bytes)
        self.max_connections = settings.max_connections
        self.max_header_bytes = settings.max_header_bytes
        self._head_seen = 0  # bytes of the head being read
        self._head_tail = b""  # its last two bytes (an end of head may straddle two reads)
        self.timeouts = {"head": settings.header_timeout_s, "body": settings.body_timeout_s}
        self._phase: str | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Refuse the connection over the cap (503, closed); else start the headers' clock."""
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._count("connections")
            transport.write(_BUSY)
            transport.close()
            return
        self._watch()

    def data_received(self, data: bytes) -> None:
        """Refuse a head that cannot end within ``max_header_bytes`` at once (431, closed; no
        parsing, no log line: a flood of them costs little), else parse as uvicorn does; then
        move the clock to the phase the request is in."""
        if self._phase == "head" and self._head_overflows(data):
            self._count("header_limit")
            self.transport.write(_TOO_LARGE)
            self.transport.close()
            self._cancel()
            return
        super().data_received(data)
        self._watch()

    def _head_overflows(self, data: bytes) -> bool:
        """Whether the head being read, with ``data``, has no end within ``max_header_bytes``
        (:class:`BoundedConnection` checks a head that does end there exactly)."""
        seen, self._head_seen = self._head_seen, self._head_seen + len(data)
        room = max(0, self.max_header_bytes - seen)
        window = self._head_tail + data[:room]
        self._head_tail = (self._head_tail + data[-2:])[-2:]
        return self._head_seen > self.max_header_bytes and not _END_OF_HEAD.search(window)

    def on_response_complete(self) -> None:
        """As uvicorn (keep-alive), then the next request's headers are on the clock."""
        super().on_response_complete()
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        """As uvicorn, and the clock stops."""
        super().connection_lost(exc)
        self._phase = None
        self._cancel()

    def _watch(self) -> None:
        """Arm the deadline of the phase the connection is in: reading a request's headers
        (from the connection or the previous response), or its body; none while the app works."""
        phase = None
        if not self.transport.is_closing():
            theirs = self.conn.their_state
            phase = "head" if theirs is h11.IDLE else "body" if theirs is h11.SEND_BODY else None
        if phase == self._phase:
            return
        self._cancel()
        self._phase = phase
        if phase == "head":
            self._head_seen, self._head_tail = 0, b""
        if phase is not None:
            self._deadline = self.loop.call_later(self.timeouts[phase], self._expire)

    def _expire(self) -> None:
        """The client was too slow: close the connection (the app, if waiting, sees it go)."""
        self._deadline = None
        if not self.transport.is_closing():
            self._count("read_timeout")
            self.transport.close()

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _count(self, reason: str) -> None:
        """Count a refusal in the app's ``rejected`` metric, when the app is the service."""
        service = getattr(getattr(self.config.app, "state", None), "service", None)
        if service is not None:
            service.metrics.rejected.labels(reason=reason).inc()


def fit_open_files(max_connections: int) -> None:
    """Make room for ``max_connections`` (plus :data:`FD_RESERVE`) open files: raise the soft
    limit when the hard one allows, else a ``ValueError`` naming the setting and the limit."""
    try:
        import resource
    except ImportError:  # not POSIX: no limit to read
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE
    if soft == resource.RLIM_INFINITY or soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise ValueError(
            f"max_connections={max_connections} needs {need} open files, over this process's "
            f"limit of {hard} (ulimit -n): lower max_connections or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` that tells the app to drain as soon as an exit is asked for."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Tell the app's service to drain (new work gets 503, in-flight jobs the grace time), then
        shut down as uvicorn does."""
        service = getattr(getattr(self.config.app, "state", None), "service", None)
        if service is not None:
            service.begin_drain()
        super().handle_exit(sig, frame)


def serve(settings: ServiceSettings, *, pipeline: Any | None = None) -> None:
    """Build the app for ``settings`` and serve it until interrupted (a model that cannot be
    loaded is refused before the server starts)."""
    from safety_lora.loading import check_source
    from safety_lora.service.app import create_app

    if settings.generation and pipeline is None and settings.model is not None:
        check_source(settings.model)
    fit_open_files(settings.max_connections)
    app = create_app(settings, pipeline=pipeline)
    config = LimitedConfig(
        app,
        settings,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        log_level="info",
    )
    DrainingServer(config).run()


class BackgroundServer:
    """Serve ``app`` with uvicorn in a daemon thread; ``port=0`` picks a free port.

    The connection limits are ``settings``', else those of the service ``app`` is, else the
    defaults. Use as a context manager: entering waits until the app has started (startup errors are
    raised), leaving shuts down gracefully. Logging is left as the caller configured it.
    """

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_timeout_s: int = 30,
        startup_timeout_s: float = 120.0,
        settings: ServiceSettings | None = None,
    ) -> None:
        if settings is None:
            service = getattr(getattr(app, "state", None), "service", None)
            settings = service.settings if service is not None else ServiceSettings()
        config = LimitedConfig(
            app,
            settings,
            host=host,
            port=port,
            log_config=None,
            timeout_graceful_shutdown=shutdown_timeout_s,
            lifespan="on",
        )
        self.server = DrainingServer(config)
        self.startup_timeout_s = startup_timeout_s
        self._thread = threading.Thread(
            target=self.server.run, name="safety-lora-server", daemon=True
        )
        self.port = port
        self.host = host

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        """Start serving and wait until the app is ready."""
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server failed to start (see the log for the cause)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {self.startup_timeout_s} s")
            time.sleep(0.01)
        sockets = [s for server in self.server.servers for s in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self

    def stop(self, *, wait: bool = True) -> None:
        """Shut down as on SIGTERM (in-flight work drains); optionally wait for it."""
        self.server.handle_exit(signal.SIGTERM, None)
        if wait:
            self._thread.join()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the server thread; True when it has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
