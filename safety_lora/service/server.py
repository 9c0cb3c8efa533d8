"""Running the service: ``serve`` (blocking, the CLI's) and ``BackgroundServer`` (a thread).

On shutdown (SIGINT/SIGTERM, or ``stop()``) the server stops accepting connections and the
app starts draining: new work gets 503, in-flight generations may finish within
``shutdown_timeout_s`` (less 2 s) and are stopped at their next denoising step after that,
so the process exits in bounded time; then the app's shutdown releases the model.
"""

from __future__ import annotations

import signal
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from safety_lora.service.settings import ServiceSettings

__all__ = ["BackgroundServer", "DrainingServer", "serve"]


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
    app = create_app(settings, pipeline=pipeline)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        log_level="info",
    )
    DrainingServer(config).run()


class BackgroundServer:
    """Serve ``app`` with uvicorn in a daemon thread; ``port=0`` picks a free port.

    Use as a context manager: entering waits until the app has started (startup errors are
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
    ) -> None:
        config = uvicorn.Config(
            app,
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
