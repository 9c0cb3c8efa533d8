"""The review queue: images a review band holds are stored, listed and decided by a person;
concurrent reviewers never both decide one item (SQLite and a real PostgreSQL server)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from PIL import Image, ImageChops, ImageDraw
from typer.testing import CliRunner

from safety_lora.audit import AuditLog, AuditWriteError, prompt_sha256, read_audit_log
from safety_lora.cli import app
from safety_lora.guard import SafetyGuard
from safety_lora.policies.schema import Policy
from safety_lora.review import (
    ReviewConflict,
    ReviewItem,
    ReviewNotFound,
    ReviewQueue,
    ReviewStoreError,
    open_queue,
)

runner = CliRunner(env={"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"})
REVIEW = {"rules": [{"category": "sexual", "between": [0.4, 0.8], "interim": "blur"}]}


def review_policy(
    tmp_path: Path, *, sexual: float = 0.6, include_prompt: bool = False, **review: Any
) -> Policy:
    """Fixed image scores (sexual ``sexual``); 0.4..0.8 is held and blurred, 0.8 and up blocked."""
    return Policy.from_dict(
        {
            "name": "review-test",
            "classifiers": [{"kind": "static", "scores": {"sexual": sexual}}],
            "categories": {"sexual": {"threshold": 0.8, "action": "block"}},
            "review": {**REVIEW, "store": str(tmp_path / "review"), **review},
            "audit": {"path": str(tmp_path / "audit.jsonl"), "include_prompt": include_prompt},
        }
    )


def picture(colour: str = "red", size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A small picture with detail (a circle on a ground), so a blur changes it."""
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).ellipse((8, 6, 36, 34), fill=colour)
    return image


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.convert("RGB")


def same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and ImageChops.difference(a, b).getbbox() is None


def queue_of(guard: SafetyGuard) -> ReviewQueue:
    assert guard.review_queue is not None
    return guard.review_queue


def race(decide: Callable[[bool, str], ReviewItem], reviewers: int) -> list[object]:
    """``reviewers`` threads decide at once (released together); each one's item or error."""
    barrier = threading.Barrier(reviewers)
    results: list[object] = [None] * reviewers

    def reviewer(i: int) -> None:
        barrier.wait()
        try:
            results[i] = decide(i % 2 == 0, f"reviewer-{i}")
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=reviewer, args=(i,)) for i in range(reviewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


# -- hold, list, read back ----------------------------------------------------------------------


def test_held_image_is_stored_and_listed(tmp_path: Path) -> None:
    policy = review_policy(tmp_path)
    guard = SafetyGuard(policy)
    original = picture()
    result = guard.moderate([original], prompt="a red circle")
    decision = result.decisions[0]
    assert decision.held and decision.action.value == "blur"
    assert decision.rule == "review.sexual"
    assert len(decision.review_id) == 32
    assert not same_pixels(result.images[0].convert("RGB"), original)  # the caller: blurred

    queue = queue_of(guard)
    [item] = queue.list()
    assert item.id == decision.review_id
    assert (item.state, item.category, item.score, item.interim) == (
        "pending",
        "sexual",
        0.6,
        "blur",
    )
    assert item.request_id == decision.request_id
    assert (item.policy, item.policy_sha256) == ("review-test", policy.sha256())
    assert item.decision["review_id"] == item.id
    assert item.decision["reasons"] == list(decision.reasons)
    assert item.prompt_sha256 == prompt_sha256("a red circle")
    assert item.prompt is None  # audit.include_prompt is off: no prompt text is kept
    assert (item.reviewer, item.note, item.decided_at) == (None, None, None)
    assert queue.get(item.id) == item
    assert same_pixels(decode(queue.image(item.id)), original)  # the original, not the blur
    assert (tmp_path / "review" / f"{item.id}.png").is_file()
    assert (tmp_path / "review" / "queue.sqlite").is_file()  # the embedded default database


def test_prompt_text_is_kept_only_when_the_policy_audits_it(tmp_path: Path) -> None:
    guard = SafetyGuard(review_policy(tmp_path, include_prompt=True))
    [decision] = guard.review([picture()], prompt="a red circle")
    assert queue_of(guard).get(decision.review_id).prompt == "a red circle"


def test_images_outside_the_band_are_not_held(tmp_path: Path) -> None:
    for sexual, action in ((0.2, "allow"), (0.9, "block")):
        guard = SafetyGuard(review_policy(tmp_path / str(sexual), sexual=sexual))
        [decision] = guard.review([picture()])
        assert (decision.action.value, decision.held, decision.review_id) == (action, False, "")
        assert queue_of(guard).list(None) == []


def test_listing_pages_and_filters(tmp_path: Path) -> None:
    guard = SafetyGuard(review_policy(tmp_path))
    decisions = guard.review([picture(c) for c in ("red", "blue", "green")])
    ids = [d.review_id for d in decisions]
    queue = queue_of(guard)
    assert [i.id for i in queue.list()] == ids  # oldest first
    assert [i.id for i in queue.list(limit=2, offset=1)] == ids[1:]
    queue.decide(ids[1], False, "ann", "not ok")
    assert [i.id for i in queue.list("pending")] == [ids[0], ids[2]]
    assert [i.id for i in queue.list("rejected")] == [ids[1]]
    assert queue.list("approved") == []
    assert len(queue.list(None)) == 3
    with pytest.raises(ValueError, match="`state` must be one of"):
        queue.list("done")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`limit` must be 1\.\.1000, got 0"):
        queue.list(limit=0)


def test_unknown_and_malformed_ids(tmp_path: Path) -> None:
    queue = queue_of(SafetyGuard(review_policy(tmp_path)))
    with pytest.raises(ReviewNotFound, match=r"no review item 0{32}"):
        queue.get("0" * 32)
    with pytest.raises(ReviewNotFound, match="not a review id"):
        queue.image("../../etc/passwd")
    with pytest.raises(ReviewNotFound):
        queue.decide("f" * 32, True, "ann")


# -- deciding -----------------------------------------------------------------------------------


def test_decision_is_audited_and_linked_to_the_original(tmp_path: Path) -> None:
    guard = SafetyGuard(review_policy(tmp_path))
    [decision] = guard.review([picture()], prompt="a red circle")
    queue = queue_of(guard)
    item = queue.decide(decision.review_id, True, "ann", "a tomato, fine")
    assert (item.state, item.reviewer, item.note) == ("approved", "ann", "a tomato, fine")
    assert item.decided_at is not None and item.decided_at >= item.created
    assert queue.get(item.id) == item

    with pytest.raises(ReviewConflict, match=f"{item.id} was already approved by ann"):
        queue.decide(item.id, False, "bob", "no")
    assert queue.get(item.id).state == "approved"  # the loser changed nothing

    records = read_audit_log(tmp_path / "audit.jsonl")
    assert [r["kind"] for r in records] == ["image", "review"]
    original, review = records
    assert original["review_id"] == review["review_id"] == item.id
    assert original["request_id"] == review["request_id"] == decision.request_id
    assert review["state"] == "approved"
    assert (review["reviewer"], review["note"]) == ("ann", "a tomato, fine")
    assert (review["category"], review["score"], review["interim"]) == ("sexual", 0.6, "blur")
    assert review["policy_sha256"] == original["policy_sha256"]
    assert review["prompt_sha256"] == original["prompt_sha256"]
    assert "prompt_text" not in review and "a red circle" not in str(review)


def test_a_decision_the_audit_log_cannot_hold_is_not_made(tmp_path: Path) -> None:
    policy = review_policy(tmp_path)
    guard = SafetyGuard(policy)
    [decision] = guard.review([picture()])
    (tmp_path / "a-folder").mkdir()
    queue = open_queue(
        policy.review, policy_name=policy.name, audit=AuditLog(tmp_path / "a-folder")
    )
    with pytest.raises(AuditWriteError):
        queue.decide(decision.review_id, True, "ann")
    assert queue.get(decision.review_id).state == "pending"


def test_decide_checks_its_arguments(tmp_path: Path) -> None:
    guard = SafetyGuard(review_policy(tmp_path))
    [decision] = guard.review([picture()])
    queue = queue_of(guard)
    with pytest.raises(ValueError, match="`reviewer` must name who decides"):
        queue.decide(decision.review_id, True, " ")
    with pytest.raises(TypeError, match="`approve` must be a bool"):
        queue.decide(decision.review_id, "yes", "ann")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`note` is 4001 characters"):
        queue.decide(decision.review_id, True, "ann", "x" * 4001)
    assert queue.get(decision.review_id).state == "pending"


def test_concurrent_reviewers_on_sqlite_one_wins(tmp_path: Path) -> None:
    """Threads, each as a reviewer, decide the same item at once: one wins, the rest lose."""
    guard = SafetyGuard(review_policy(tmp_path))
    decisions = guard.review([picture() for _ in range(4)])
    queue = queue_of(guard)
    for decision in decisions:
        results = race(lambda ok, who, i=decision.review_id: queue.decide(i, ok, who), 6)
        winners = [r for r in results if isinstance(r, ReviewItem)]
        losers = [r for r in results if isinstance(r, ReviewConflict)]
        assert (len(winners), len(losers)) == (1, 5), results
        assert queue.get(decision.review_id) == winners[0]
    reviews = [r for r in read_audit_log(tmp_path / "audit.jsonl") if r["kind"] == "review"]
    assert sorted(r["review_id"] for r in reviews) == sorted(d.review_id for d in decisions)


# -- stores and databases -----------------------------------------------------------------------


def test_any_fsspec_store_with_a_database_url(tmp_path: Path) -> None:
    store = f"memory://safety-lora-review-{uuid.uuid4().hex}"
    database = f"sqlite:///{tmp_path / 'queue.db'}"
    guard = SafetyGuard(review_policy(tmp_path, store=store, database=database))
    [decision] = guard.review([picture("blue")])
    fs, root = fsspec.core.url_to_fs(store)
    assert same_pixels(decode(fs.cat_file(f"{root}/{decision.review_id}.png")), picture("blue"))
    assert (tmp_path / "queue.db").is_file()
    assert queue_of(guard).list()[0].id == decision.review_id


def test_a_remote_store_needs_a_database_url(tmp_path: Path) -> None:
    with pytest.raises(ReviewStoreError, match=r"set review\.database to an SQLAlchemy URL"):
        SafetyGuard(review_policy(tmp_path, store="memory://held"))
    with pytest.raises(ReviewStoreError, match=r"review\.database 'not a url'"):
        SafetyGuard(review_policy(tmp_path, database="not a url"))


def test_two_guards_share_one_queue(tmp_path: Path) -> None:
    """Two processes' worth of guards (replicas) on one store: each sees the other's items."""
    policy = review_policy(tmp_path)
    one, two = SafetyGuard(policy), SafetyGuard(policy)
    [held] = one.review([picture()])
    assert [i.id for i in queue_of(two).list()] == [held.review_id]
    queue_of(two).decide(held.review_id, False, "bob", "too much")
    assert queue_of(one).get(held.review_id).state == "rejected"


# -- moderate reports held items ----------------------------------------------------------------


def test_moderate_reports_held_images(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: review-cli\n"
        "classifiers: [{kind: static, scores: {sexual: 0.6}}]\n"
        "categories: {sexual: {threshold: 0.8, action: block}}\n"
        "review: {rules: [{category: sexual, between: [0.4, 0.8], interim: blur}]}\n"
        "audit: {path: audit.jsonl}\n",
        encoding="utf-8",
    )
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a.png", "b.png"):
        picture().save(images / name)
    table = runner.invoke(app, ["moderate", str(images), "-p", str(policy)])
    lines = runner.invoke(app, ["moderate", str(images), "-p", str(policy), "--json"])
    assert table.exit_code == lines.exit_code == 1, table.output  # held images are not allowed
    queue = open_queue(Policy.from_file(policy).review, policy_name="review-cli")
    ids = [item.id for item in queue.list()]
    assert len(ids) == 4  # two runs of two images, each stored in review/ beside the policy
    assert "held 2 images for review:" in table.output
    assert all(i in table.output for i in ids[:2])
    rows = [r for r in map(_json, lines.stdout.splitlines()) if r]
    assert [(r["action"], r["rule"], r["review_id"]) for r in rows] == [
        ("blur", "review.sexual", i) for i in ids[2:]
    ]


def _json(line: str) -> dict[str, Any] | None:
    import json

    return json.loads(line) if line.startswith("{") else None


# -- SafePipeline on the embedded model ---------------------------------------------------------


@pytest.mark.slow
def test_safe_pipeline_holds_a_red_image(tmp_path: Path) -> None:
    """The demo policy with a review band: the first attempt of "a shape" (seed 24, not
    steered) is red, so it is held and blurred instead of regenerated; the queue keeps it red."""
    import torch

    from safety_lora.classifiers.concept_world import ConceptWorldClassifier
    from safety_lora.demo import demo_policy
    from safety_lora.models import CONCEPT_WORLD_DEFAULTS, concept_world
    from safety_lora.pipeline import SafePipeline
    from safety_lora.taxonomy import Category

    data = demo_policy().model_dump(mode="json")
    data["review"] = {
        "rules": [{"category": "sexual", "between": [0.4, 1.0], "interim": "blur"}],
        "store": str(tmp_path / "review"),
    }
    data["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    safe = SafePipeline(concept_world(), Policy.from_dict(data))
    generator = torch.Generator().manual_seed(24)
    out = safe("a shape", generator=generator, **CONCEPT_WORLD_DEFAULTS)
    [decision] = out.decisions
    assert (decision.action.value, decision.rule, decision.attempts) == ("blur", "review.sexual", 1)
    assert decision.scores[Category.SEXUAL] == 1.0
    queue = queue_of(safe.guard)
    [item] = queue.list()
    assert item.id == decision.review_id
    held = decode(queue.image(item.id))
    red = ConceptWorldClassifier(unsafe={Category.SEXUAL: ["red"]})
    assert red.classify([held])[0].scores[Category.SEXUAL] == 1.0  # the original: red
    assert not same_pixels(held, out.images[0].convert("RGB"))  # the caller's: blurred
    [record] = [r for r in read_audit_log(tmp_path / "audit.jsonl") if r["kind"] == "image"]
    assert record["review_id"] == item.id


# -- PostgreSQL ---------------------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """The folder of Debian's (or any) PostgreSQL server binaries, newest version first."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    return next((d for d in candidates if (d / "pg_ctl").exists()), None)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of the test's own: a cluster made in a temporary folder, listening
    on a unix socket there only, run as an unprivileged user when the tests run as root."""
    import pwd

    from sqlalchemy.engine import URL

    bin_dir = _postgres_bin()
    if bin_dir is None:
        missing = "needs PostgreSQL's server binaries (initdb, pg_ctl): Debian's postgresql"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; .ci/run installs it, so CI must run this test")
        pytest.skip(missing)
    folder = Path(tempfile.mkdtemp(prefix="safety-lora-pg-"))  # /tmp: the server user can reach
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:  # the server refuses to run as root
        entry = pwd.getpwnam("postgres" if _has_user("postgres") else "nobody")
        os.chown(folder, entry.pw_uid, entry.pw_gid)
        run_as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    data, log = folder / "data", folder / "server.log"

    def run(*args: str) -> None:
        done = subprocess.run(
            list(args), capture_output=True, text=True, timeout=120, cwd=folder, **run_as
        )
        assert done.returncode == 0, f"{args[0]}: {done.stdout}{done.stderr}"

    try:
        run(str(bin_dir / "initdb"), "-D", str(data), "-U", "review", "--auth=trust",
            "--no-locale", "-E", "UTF8", "--no-sync")  # fmt: skip
        options = f"-c listen_addresses='' -k {folder} -c fsync=off -c max_connections=40"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", options, "start")  # fmt: skip
        try:
            yield URL.create(
                "postgresql+psycopg", username="review", database="postgres",
                query={"host": str(folder)},
            ).render_as_string(hide_password=False)  # fmt: skip
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.slow
def test_postgres_queue_shared_by_replicas_one_reviewer_wins(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two replicas (guards) share a queue in a real PostgreSQL; on each held item, reviewers
    on both replicas decide at once, and exactly one of them wins."""
    policy = review_policy(tmp_path, database=postgres_url)
    one, two = SafetyGuard(policy), SafetyGuard(policy)
    queues = [queue_of(one), queue_of(two)]
    try:
        check_replicas(one, two, queues, tmp_path / "audit.jsonl")
    finally:  # before the server stops under them
        for queue in queues:
            queue.close()


def check_replicas(
    one: SafetyGuard, two: SafetyGuard, queues: list[ReviewQueue], audit: Path
) -> None:
    held = one.review([picture() for _ in range(3)]) + two.review([picture("blue")])
    assert sorted(i.id for i in queues[1].list()) == sorted(d.review_id for d in held)
    assert queues[1].list()[0].created.tzinfo is not None
    for decision in held:

        def decide(ok: bool, who: str, i: str = decision.review_id) -> ReviewItem:
            return queues[int(who.rsplit("-", 1)[1]) % 2].decide(i, ok, who, "race")

        results = race(decide, 8)
        winners = [r for r in results if isinstance(r, ReviewItem)]
        assert len(winners) == 1, results
        assert all(isinstance(r, ReviewConflict) for r in results if r is not winners[0])
        assert queues[0].get(decision.review_id) == winners[0]
    assert queues[0].list("pending") == []
    assert same_pixels(decode(queues[1].image(held[-1].review_id)), picture("blue"))
    reviews = [r for r in read_audit_log(audit) if r["kind"] == "review"]
    assert sorted(r["review_id"] for r in reviews) == sorted(d.review_id for d in held)
