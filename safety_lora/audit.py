"""The JSONL audit log: one line per decision, safe with concurrent threads and processes.

Every line has a ``kind``: ``prompt`` (a prompt check, :func:`prompt_record`), ``image``
(an image's decision, :func:`image_records`), ``input`` (the verdict on an image a request
brought, before generation; same fields, and ``input`` names the argument) or ``review`` (a
person's decision on a held image, :mod:`safety_lora.review`); all carry the policy's name
and a UTC time.
Each record is serialised first, then appended with a single ``write`` on an ``O_APPEND``
descriptor under a cross-process file lock, so lines never interleave and a crash before the
write leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

if TYPE_CHECKING:
    from safety_lora.decisions import Decision, PromptDecision

__all__ = [
    "AuditLog",
    "AuditWriteError",
    "image_records",
    "merge_audit_logs",
    "prompt_record",
    "prompt_sha256",
    "read_audit_log",
    "replica_audit_path",
]


class AuditWriteError(OSError):
    """The audit log cannot be written, so what it should record must not be served."""


class AuditLog:
    """Appends JSON records to ``path``; the parent folder is created if missing.

    A failed write raises :class:`AuditWriteError` and is kept in :attr:`failure` until a
    write or :meth:`check` succeeds.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        #: Why the last write failed; None once one (or a :meth:`check`) succeeds.
        self.failure: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._failed(e) from e
        self._lock = FileLock(str(self.path) + ".lock")
        self._thread_lock = threading.Lock()

    def check(self) -> None:
        """Open the log and its lock file for append (creating them and the folder), writing
        nothing: :class:`AuditWriteError` naming the path when that fails; clears
        :attr:`failure` when it works. Run at start-up, before any decision needs it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for path in (self.path, Path(str(self.path) + ".lock")):
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
        except OSError as e:
            raise self._failed(e) from e
        self.failure = None

    def _failed(self, error: OSError) -> AuditWriteError:
        why = error.strerror or str(error)
        where = (
            f" ({error.filename})"
            if error.filename and str(error.filename) != str(self.path)
            else ""
        )
        self.failure = f"audit log {self.path} cannot be written: {why}{where}"
        return AuditWriteError(error.errno, self.failure)

    def write(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Append ``records`` as one block of complete lines."""
        blob = "".join(
            json.dumps(r, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"
            for r in records
        ).encode("utf-8")
        if not blob:
            return
        try:
            with self._thread_lock, self._lock:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    written = os.write(fd, blob)
                    while written < len(blob):  # regular files rarely short-write; finish
                        written += os.write(fd, blob[written:])
                finally:
                    os.close(fd)
        except OSError as e:
            raise self._failed(e) from e
        self.failure = None


def prompt_record(decision: PromptDecision, *, policy: str, text: str | None) -> dict[str, Any]:
    """The line of one prompt check; ``text`` is kept only when given (``include_prompt``)."""
    record: dict[str, Any] = {"kind": "prompt", "time": _now(), "policy": policy}
    record.update(decision.to_dict())
    if text is not None:
        record["prompt_text"] = text
    return record


def image_records(
    decisions: Sequence[Decision],
    *,
    policy: str,
    prompt: str | None,
    include_prompt: bool,
    kind: str = "image",
) -> list[dict[str, Any]]:
    """The lines of one prompt's images (``image_index`` in order; ``kind="input"`` for its
    input images); ``prompt``, when known, is hashed into each (kept with ``include_prompt``)."""
    now = _now()
    records = []
    for index, decision in enumerate(decisions):
        pd = decision.prompt_decision
        record = decision.to_dict()
        record.update(
            kind=kind,
            time=now,
            image_index=index,
            policy=policy,
            prompt_sha256=pd.prompt_sha256 if pd else None,
        )
        if prompt is not None:
            record["prompt_sha256"] = prompt_sha256(prompt)
            if include_prompt:
                record["prompt_text"] = prompt
        records.append(record)
    return records


def prompt_sha256(text: str) -> str:
    """The hash under which a prompt is audited (and its decision recognised) instead of the
    text itself."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


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


def replica_audit_path(path: Path, replica: str) -> Path:
    """``audit.jsonl`` -> ``audit.<replica>.jsonl``: one file per replica or worker, so no
    lock is shared across machines (:func:`merge_audit_logs` joins them)."""
    return path.with_name(f"{path.stem}.{replica}{path.suffix}")


def merge_audit_logs(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every line of ``paths`` (one file per replica) in time order; equal times keep their
    files' order. A line without a parseable ``time`` raises ``ValueError`` naming it."""
    keyed = []
    for index, path in enumerate(paths):
        for number, record in enumerate(read_audit_log(path), start=1):
            text = record.get("time") if isinstance(record, dict) else None
            try:
                when = datetime.fromisoformat(str(text))
            except ValueError as e:
                raise ValueError(f"{path}:{number}: no ISO 8601 'time' (got {text!r})") from e
            if when.tzinfo is None:
                raise ValueError(f"{path}:{number}: time {record['time']!r} has no time zone")
            keyed.append((when, index, number, record))
    keyed.sort(key=lambda k: k[:3])
    return [record for *_, record in keyed]
