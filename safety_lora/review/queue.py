"""``ReviewQueue``: images a policy's review band held, waiting for a person to decide.

The queue's state is a table in a real database (SQLAlchemy Core): an SQLite file in the
image store by default, any SQLAlchemy URL (PostgreSQL) when several replicas share one queue.
A decision is one conditional ``UPDATE ... WHERE state = 'pending'``, so of two reviewers
deciding one item at once exactly one wins; the other gets :class:`ReviewConflict`. Each
decision is written to the policy's audit log (kind ``review``) in the same transaction.
"""

from __future__ import annotations

import builtins
import re
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal, get_args

from PIL import Image
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    MetaData,
    RowMapping,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from safety_lora.audit import AuditLog, prompt_sha256
from safety_lora.decisions import Decision
from safety_lora.policies.schema import ReviewSettings
from safety_lora.review.errors import ReviewError, ReviewNotFound, ReviewStoreError
from safety_lora.review.store import ImageStore, png_bytes
from safety_lora.taxonomy import Category

__all__ = [
    "ReviewConflict",
    "ReviewItem",
    "ReviewQueue",
    "ReviewState",
    "open_queue",
    "review_record",
]

#: An item's state: waiting for a person, or what the person decided.
ReviewState = Literal["pending", "approved", "rejected"]
STATES: tuple[str, ...] = get_args(ReviewState)
#: The SQLite file of the default database, in the store folder.
SQLITE_FILE = "queue.sqlite"
#: Longest note and reviewer name a decision keeps (characters).
MAX_NOTE_CHARS = 4000
MAX_REVIEWER_CHARS = 200
_ID = re.compile(r"^[0-9a-f]{32}$")

metadata = MetaData()
#: One row per held image; ``image`` is its key in the store.
items = Table(
    "safety_lora_review_items",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("request_id", String(128), nullable=False),
    Column("policy", String(256), nullable=False),
    Column("policy_sha256", String(64), nullable=False),
    Column("category", String(32), nullable=False),
    Column("score", Float, nullable=False),
    Column("interim", String(16), nullable=False),
    Column("decision", JSON, nullable=False),
    Column("image", String(512), nullable=False),
    Column("prompt_sha256", String(64)),
    Column("prompt", Text),
    Column("state", String(16), nullable=False),
    Column("reviewer", String(MAX_REVIEWER_CHARS)),
    Column("note", Text),
    Column("decided_at", DateTime(timezone=True)),
    Index("ix_safety_lora_review_items_queue", "policy", "state", "created"),
)


class ReviewConflict(ReviewError):
    """The item was decided already (by another reviewer, or earlier): nothing was changed."""

    def __init__(self, item: ReviewItem) -> None:
        when = item.decided_at.isoformat() if item.decided_at else "?"
        super().__init__(
            f"review item {item.id} was already {item.state} by {item.reviewer} at {when}; "
            f"nothing was changed"
        )
        self.item = item


@dataclass(frozen=True)
class ReviewItem:
    """One held image's record: where it came from (request, policy, the decision that held
    it), and what a person decided (``state``, ``reviewer``, ``note``, ``decided_at``).

    ``prompt`` is the prompt's text only when the policy's ``audit.include_prompt`` keeps it;
    ``prompt_sha256`` identifies it otherwise.
    """

    id: str
    created: datetime
    request_id: str
    policy: str
    policy_sha256: str
    decision: dict[str, Any]
    category: str
    score: float
    interim: str
    state: ReviewState = "pending"
    reviewer: str | None = None
    note: str | None = None
    decided_at: datetime | None = None
    prompt_sha256: str | None = None
    prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (the reviewer API)."""
        return {
            "id": self.id,
            "created": self.created.isoformat(),
            "request_id": self.request_id,
            "policy": self.policy,
            "policy_sha256": self.policy_sha256,
            "category": self.category,
            "score": self.score,
            "interim": self.interim,
            "state": self.state,
            "reviewer": self.reviewer,
            "note": self.note,
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "prompt_sha256": self.prompt_sha256,
            "prompt": self.prompt,
            "decision": self.decision,
        }


def review_record(item: ReviewItem) -> dict[str, Any]:
    """The audit line of a person's decision on ``item`` (kind ``review``), linked to the
    original image's line by ``review_id`` and ``request_id``."""
    return {
        "kind": "review",
        "time": (item.decided_at or datetime.now(timezone.utc)).isoformat(),
        "policy": item.policy,
        "policy_sha256": item.policy_sha256,
        "review_id": item.id,
        "request_id": item.request_id,
        "state": item.state,
        "reviewer": item.reviewer,
        "note": item.note,
        "category": item.category,
        "score": item.score,
        "interim": item.interim,
        "rule": item.decision.get("rule"),
        "held_at": item.created.isoformat(),
        "prompt_sha256": item.prompt_sha256,
    }


class ReviewQueue:
    """The held images of one policy (``policy_name``) in a database, their originals in an
    :class:`~safety_lora.review.store.ImageStore`; decisions go to ``audit`` when given."""

    def __init__(
        self,
        engine: Engine,
        store: ImageStore,
        *,
        policy_name: str,
        audit: AuditLog | None = None,
        include_prompt: bool = False,
    ) -> None:
        self.engine = engine
        self.store = store
        self.policy_name = policy_name
        self.audit = audit
        self.include_prompt = include_prompt
        _create_schema(engine)

    def hold(self, image: Image.Image, decision: Decision, *, prompt: str | None = None) -> str:
        """Store ``image`` (the original, as PNG) and queue it as pending; its review id.

        ``decision`` must be one a review band made (rule ``review.<category>``). ``prompt``
        is hashed into the item, and kept as text only with ``include_prompt``.
        """
        if not decision.held:
            raise ValueError(f"decision rule {decision.rule!r} holds nothing for review")
        category = decision.rule.removeprefix("review.")
        score = decision.scores.get(Category(category))
        if score is None:
            raise ValueError(f"decision holds for {category} but has no {category} score")
        review_id = uuid.uuid4().hex
        key = f"{review_id}.png"
        pd = decision.prompt_decision
        digest = prompt_sha256(prompt) if prompt is not None else (pd.prompt_sha256 if pd else "")
        self.store.put(key, png_bytes(image))
        row = {
            "id": review_id,
            "created": datetime.now(timezone.utc),
            "request_id": decision.request_id,
            "policy": self.policy_name,
            "policy_sha256": decision.policy_sha256,
            "category": category,
            "score": float(score),
            "interim": decision.action.value,
            "decision": replace(decision, review_id=review_id).to_dict(),
            "image": key,
            "prompt_sha256": digest or None,
            "prompt": prompt if self.include_prompt else None,
            "state": "pending",
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(items).values(**row))
        except SQLAlchemyError as e:
            self.store.remove(key)
            raise self._failed("cannot queue a held image", e) from e
        return review_id

    def list(
        self, state: ReviewState | None = "pending", *, limit: int = 50, offset: int = 0
    ) -> builtins.list[ReviewItem]:
        """Items in ``state`` (None: all), oldest first, ``limit`` of them from ``offset``."""
        if state is not None and state not in STATES:
            raise ValueError(f"`state` must be one of {', '.join(STATES)} or None, got {state!r}")
        if not 1 <= limit <= 1000:
            raise ValueError(f"`limit` must be 1..1000, got {limit}")
        if offset < 0:
            raise ValueError(f"`offset` must be >= 0, got {offset}")
        query = select(items).where(items.c.policy == self.policy_name)
        if state is not None:
            query = query.where(items.c.state == state)
        query = query.order_by(items.c.created, items.c.id).limit(limit).offset(offset)
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(query).mappings().all()
        except SQLAlchemyError as e:
            raise self._failed("cannot list review items", e) from e
        return [_item(row) for row in rows]

    def get(self, review_id: str) -> ReviewItem:
        """The item ``review_id``; :class:`ReviewNotFound` when this queue has none."""
        return _item(self._row(review_id))

    def image(self, review_id: str) -> bytes:
        """The held original of item ``review_id`` (PNG bytes)."""
        return self.store.get(str(self._row(review_id)["image"]))

    def decide(self, review_id: str, approve: bool, reviewer: str, note: str = "") -> ReviewItem:
        """Approve or reject pending item ``review_id`` as ``reviewer`` with ``note``; audited.

        Atomic: the item changes only while still pending, so of concurrent reviewers one wins
        and the others get :class:`ReviewConflict` (as does deciding an item twice).
        """
        if not isinstance(approve, bool):
            raise TypeError(f"`approve` must be a bool, got {type(approve).__name__}")
        if not isinstance(reviewer, str) or not reviewer.strip():
            raise ValueError(f"`reviewer` must name who decides, got {reviewer!r}")
        if len(reviewer) > MAX_REVIEWER_CHARS:
            raise ValueError(f"`reviewer` is {len(reviewer)} characters, over {MAX_REVIEWER_CHARS}")
        if not isinstance(note, str):
            raise TypeError(f"`note` must be a string, got {type(note).__name__}")
        if len(note) > MAX_NOTE_CHARS:
            raise ValueError(f"`note` is {len(note)} characters, over {MAX_NOTE_CHARS}")
        self._check_id(review_id)
        state: ReviewState = "approved" if approve else "rejected"
        values = {
            "state": state,
            "reviewer": reviewer,
            "note": note,
            "decided_at": datetime.now(timezone.utc),
        }
        mine = (items.c.id == review_id) & (items.c.policy == self.policy_name)
        try:
            with self.engine.begin() as conn:
                changed = conn.execute(
                    update(items).where(mine & (items.c.state == "pending")).values(**values)
                ).rowcount
                row = conn.execute(select(items).where(mine)).mappings().first()
                if row is None:
                    raise ReviewNotFound(
                        f"no review item {review_id} for policy {self.policy_name!r}"
                    )
                item = _item(row)
                if changed != 1:
                    raise ReviewConflict(item)
                if self.audit is not None:  # inside the transaction: no unaudited decision
                    self.audit.write([review_record(item)])
        except SQLAlchemyError as e:
            raise self._failed(f"cannot decide review item {review_id}", e) from e
        return item

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def _row(self, review_id: str) -> RowMapping:
        self._check_id(review_id)
        query = select(items).where(
            (items.c.id == review_id) & (items.c.policy == self.policy_name)
        )
        try:
            with self.engine.connect() as conn:
                row = conn.execute(query).mappings().first()
        except SQLAlchemyError as e:
            raise self._failed(f"cannot read review item {review_id}", e) from e
        if row is None:
            raise ReviewNotFound(f"no review item {review_id} for policy {self.policy_name!r}")
        return row

    def _check_id(self, review_id: str) -> None:
        if not isinstance(review_id, str) or not _ID.match(review_id):
            raise ReviewNotFound(f"{review_id!r} is not a review id (32 hex digits)")

    def _failed(self, what: str, error: SQLAlchemyError) -> ReviewStoreError:
        where = self.engine.url.render_as_string(hide_password=True)
        return ReviewStoreError(f"review.database {where}: {what}: {error}")


def open_queue(
    settings: ReviewSettings,
    *,
    policy_name: str,
    audit: AuditLog | None = None,
    include_prompt: bool = False,
) -> ReviewQueue:
    """The queue a policy's ``review`` section names: its store opened (folder created), its
    database connected and its table created when missing. Decisions are audited to ``audit``
    (the policy's log); prompts are kept as text only with ``include_prompt``."""
    store = ImageStore(settings.store)
    if settings.database is not None:
        url = _database_url(settings.database)
    elif store.local:
        url = URL.create("sqlite", database=store.path(SQLITE_FILE))
    else:
        raise ReviewStoreError(
            f"review.store {settings.store!r} is not a folder on this machine, so the default "
            f"SQLite queue cannot live there: set review.database to an SQLAlchemy URL "
            f"(e.g. postgresql+psycopg://user@host/db)"
        )
    return ReviewQueue(
        _engine(url, settings.database),
        store,
        policy_name=policy_name,
        audit=audit,
        include_prompt=include_prompt,
    )


def _database_url(text: str) -> URL:
    try:
        return make_url(text)
    except ArgumentError as e:
        raise ReviewStoreError(f"review.database {text!r} is not an SQLAlchemy URL: {e}") from e


def _engine(url: URL, setting: str | None) -> Engine:
    """An engine for ``url``: SQLite waits for a writer's lock (30 s) and journals ahead (WAL),
    so threads and processes on one machine share the file; others check connections first."""
    shown = url.render_as_string(hide_password=True)
    try:
        if url.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        extra = (
            ' (pip install "safety-lora[postgres]")'
            if url.get_backend_name() == "postgresql"
            else ""
        )
        raise ReviewStoreError(
            f"review.database {shown}: no driver for it is installed{extra}: {e}"
        ) from e
    except (ArgumentError, SQLAlchemyError) as e:
        raise ReviewStoreError(f"review.database {setting or shown}: {e}") from e


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _create_schema(engine: Engine) -> None:
    """Create the queue's table when missing; replicas starting together may race to create
    it, and the loser finds it made."""
    shown = engine.url.render_as_string(hide_password=True)
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as e:
        try:
            made = inspect(engine).has_table(items.name)
        except SQLAlchemyError:
            made = False
        if not made:
            raise ReviewStoreError(f"review.database {shown}: cannot create the queue: {e}") from e


def _item(row: RowMapping) -> ReviewItem:
    return ReviewItem(
        id=row["id"],
        created=_utc(row["created"]),
        request_id=row["request_id"],
        policy=row["policy"],
        policy_sha256=row["policy_sha256"],
        decision=dict(row["decision"]),
        category=row["category"],
        score=float(row["score"]),
        interim=row["interim"],
        state=row["state"],
        reviewer=row["reviewer"],
        note=row["note"],
        decided_at=_utc(row["decided_at"]) if row["decided_at"] is not None else None,
        prompt_sha256=row["prompt_sha256"],
        prompt=row["prompt"],
    )


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
