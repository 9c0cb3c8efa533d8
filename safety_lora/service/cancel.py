"""Stopping a generation between denoising steps: a deadline, a client gone, a server draining.

A :class:`Cancellation` is handed to the pipeline as its ``callback_on_step_end``: at every
step it raises :class:`Cancelled` once the request's deadline has passed or :meth:`cancel`
was called, so the inner pipeline stops at the next step and the model is free again.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["Cancellation", "Cancelled"]


class Cancelled(Exception):
    """A generation was stopped; ``reason`` says why (``deadline``, ``disconnected``, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Cancellation:
    """A deadline ``timeout_s`` from now, which :meth:`cancel` or :meth:`shorten` can bring in."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.deadline = time.monotonic() + timeout_s
        self._reason: tuple[str, str] | None = None
        self._late: tuple[str, str] | None = None  # why the deadline was shortened
        self._lock = threading.Lock()

    def cancel(self, reason: str, message: str) -> None:
        """Stop at the next step (the first reason given wins)."""
        with self._lock:
            self._reason = self._reason or (reason, message)

    def shorten(self, seconds: float, reason: str, message: str) -> None:
        """Bring the deadline to at most ``seconds`` from now, with this reason once it passes."""
        with self._lock:
            limit = time.monotonic() + seconds
            if limit < self.deadline:
                self.deadline = limit
                self._late = (reason, message)

    def remaining(self) -> float:
        """Seconds until the deadline (0 when past or cancelled)."""
        if self._reason is not None:
            return 0.0
        return max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise :class:`Cancelled` when the job must stop."""
        if self._reason is not None:
            raise Cancelled(*self._reason)
        if time.monotonic() >= self.deadline:
            reason, message = self._late or (
                "deadline",
                f"the request ran past its deadline of {self.timeout_s:g} s",
            )
            raise Cancelled(reason, message)

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        """``callback_on_step_end``: check between steps, pass the tensors on unchanged."""
        self.check()
        return tensors
