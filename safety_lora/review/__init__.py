"""Human review: images a policy's review band holds, kept for a person to approve or reject.

A policy's ``review`` section says which images are held (a category's score band), where
their originals are stored (a folder or any fsspec URL) and where the queue lives (an
SQLAlchemy URL; an SQLite file in the store by default). :func:`open_queue` opens it; the
guard holds images into it, and the service's reviewer page and API decide them.
"""

from safety_lora.review.errors import ReviewError, ReviewNotFound, ReviewStoreError
from safety_lora.review.queue import (
    ReviewConflict,
    ReviewItem,
    ReviewQueue,
    ReviewState,
    open_queue,
    review_record,
)
from safety_lora.review.store import ImageStore

__all__ = [
    "ImageStore",
    "ReviewConflict",
    "ReviewError",
    "ReviewItem",
    "ReviewNotFound",
    "ReviewQueue",
    "ReviewState",
    "ReviewStoreError",
    "open_queue",
    "review_record",
]
