"""One way to derive seeds: a hash of named parts, so every stream is reproducible and apart."""

from __future__ import annotations

import hashlib

__all__ = ["hashed_seed"]


def hashed_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` joined by ``:`` (first 8 bytes of their SHA-256)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
