"""The review queue's errors (one base, :class:`ReviewError`, to catch them all)."""

from __future__ import annotations

__all__ = ["ReviewError", "ReviewNotFound", "ReviewStoreError"]


class ReviewError(Exception):
    """A review queue operation failed (see the subclasses)."""


class ReviewStoreError(ReviewError, OSError):
    """The review queue's database or image store cannot be opened, read or written."""


class ReviewNotFound(ReviewError, LookupError):
    """No item of this queue has the given review id."""
