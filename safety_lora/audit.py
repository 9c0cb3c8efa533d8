"""The JSONL audit log: one line per decision, safe with concurrent threads and processes.

Each record is serialised first, then appended with a single ``write`` on an ``O_APPEND``
descriptor under a cross-process file lock, so lines never interleave and a crash before the
write leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["AuditLog", "read_audit_log"]


class AuditLog:
    """Appends JSON records to ``path``; the parent folder is created if missing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.path) + ".lock")
        self._thread_lock = threading.Lock()

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append ``records`` as one block of complete lines."""
        blob = "".join(
            json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
            for r in records
        ).encode("utf-8")
        if not blob:
            return
        with self._thread_lock, self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                written = os.write(fd, blob)
                while written < len(blob):  # regular files rarely short-write; finish the block
                    written += os.write(fd, blob[written:])
            finally:
                os.close(fd)


def read_audit_log(path: str | Path) -> list[dict[str, Any]]:
    """Parse every line of an audit log (raises ``ValueError`` naming the bad line)."""
    records = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a JSON line: {e}") from e
    return records
