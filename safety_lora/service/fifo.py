"""A first-come, first-served lock: the one model is handed to waiting requests in order.

``threading.Lock`` makes no promise of order, so a client looping on requests can keep
re-taking the model while another waits; here each release hands the lock to the longest
waiter, so a request waits for at most the jobs that arrived before it.
"""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["FifoLock"]


class FifoLock:
    """``acquire(timeout)`` / ``release()``, granted in arrival order."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._waiters: deque[threading.Event] = deque()

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock (waiting at most ``timeout`` seconds); False when the time ran out."""
        with self._mutex:
            if not self._held and not self._waiters:
                self._held = True
                return True
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait(timeout)
        with self._mutex:
            if turn.is_set():  # handed over by release(), perhaps just as the wait timed out
                return True
            self._waiters.remove(turn)
            return False

    def release(self) -> None:
        """Hand the lock to the longest waiter, or free it."""
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().set()  # stays held: ownership passes on
            else:
                self._held = False
