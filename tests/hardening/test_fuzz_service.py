"""Property tests (hypothesis) of the service's bounds: text lengths, text and part counts,
and request heads of any size, however they arrive.

Each asserts one rule for the whole family: within every limit the request is judged (and
audited); over any, it is refused with a 400 naming the limit, and nothing is judged.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from safety_lora.audit import read_audit_log
from safety_lora.service import BackgroundServer, ServiceSettings, create_app

FAST = settings(max_examples=40, deadline=None)
#: Static image scores and the prompt rules: every text checked is one audit line.
POLICY = """
name: fuzz-service
categories: {sexual: {threshold: 0.5, action: replace}}
classifiers: [{kind: static, scores: {sexual: 0.0}}]
prompt:
  classifiers: [{kind: prompt_rules}]
"""
MAX_CHARS, MAX_TEXTS, MAX_PARTS, MAX_HEAD = 30, 4, 5, 2048


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-service") / "audit.jsonl"


def _settings(audit: Path) -> ServiceSettings:
    policy = audit.parent / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    return ServiceSettings(
        policy=str(policy),
        audit_path=audit,
        generation=False,
        rate_limit_per_minute=0.0,
        max_text_chars=MAX_CHARS,
        max_texts=MAX_TEXTS,
        max_parts=MAX_PARTS,
        max_header_bytes=MAX_HEAD,
    )


@pytest.fixture(scope="module")
def client(audit: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(audit))) as client:
        yield client


def _lines(audit: Path) -> int:
    return len(read_audit_log(audit)) if audit.exists() else 0


lengths = st.integers(0, 2 * MAX_CHARS)
texts = st.lists(lengths, min_size=1, max_size=2 * MAX_TEXTS)


@FAST
@given(shape=st.one_of(lengths, texts), route=st.sampled_from(["moderations", "prompt"]))
def test_texts_within_the_limits_are_judged_and_over_them_refused(
    client: TestClient, audit: Path, shape: int | list[int], route: str
) -> None:
    sizes = [shape] if isinstance(shape, int) else shape
    body: dict[str, Any] = {
        "input": "a" * shape if isinstance(shape, int) else ["a" * n for n in shape]
    }
    path = "/v1/moderations" if route == "moderations" else "/v1/moderations/prompt"
    before = _lines(audit)
    response = client.post(path, json=body)
    if len(sizes) > MAX_TEXTS:
        expected: str | None = "(max_texts)"
    elif max(sizes) > MAX_CHARS:
        expected = "(max_text_chars)"
    else:
        expected = None
    if expected is None:
        assert response.status_code == 200, response.text
        assert _lines(audit) == before + len(sizes)
    else:
        assert response.status_code == 400
        assert response.json()["error"]["message"].endswith(expected)
        assert _lines(audit) == before


parts = st.lists(
    st.one_of(lengths.map(lambda n: ("text", n)), st.just(("image_url", 0))),
    min_size=1,
    max_size=2 * MAX_PARTS,
)


@FAST
@given(shape=parts)
def test_content_parts_within_the_limits_are_judged_and_over_them_refused(
    client: TestClient, audit: Path, shape: list[tuple[str, int]]
) -> None:
    body = {
        "input": [
            {"type": "text", "text": "a" * n}
            if kind == "text"
            else {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}
            for kind, n in shape
        ]
    }
    before = _lines(audit)
    response = client.post("/v1/moderations", json=body)
    message = response.json().get("error", {}).get("message", "")
    if len(shape) > MAX_PARTS:
        assert response.status_code == 400 and message.endswith("(max_parts)")
    elif max((n for kind, n in shape if kind == "text"), default=0) > MAX_CHARS:
        assert response.status_code == 400 and message.endswith("(max_text_chars)")
    elif any(kind == "image_url" for kind, _ in shape):  # the limits came first, then this
        assert response.status_code == 400 and "only data: URLs" in message
    else:
        assert response.status_code == 200
        assert _lines(audit) == before + len(shape)
        return
    assert _lines(audit) == before


@pytest.fixture(scope="module")
def server(audit: Path) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(_settings(audit))) as server:
        yield server


@FAST
@given(
    values=st.lists(st.integers(0, MAX_HEAD), min_size=0, max_size=6),
    cuts=st.lists(st.integers(1, 3 * MAX_HEAD), max_size=4),
)
def test_a_request_head_is_refused_exactly_when_over_max_header_bytes(
    server: BackgroundServer, values: list[int], cuts: list[int]
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += b"".join(b"x-pad-%d: %s\r\n" % (i, b"v" * n) for i, n in enumerate(values))
    head += b"\r\n"
    ends = [*sorted(cuts), len(head)]
    pieces = [head[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    answer = b""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            for piece in pieces:  # the head arrives in whatever pieces hypothesis chose
                if piece:
                    sock.sendall(piece)
        except OSError:
            pass  # refused before the rest arrived
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    statuses = (b"HTTP/1.1 200",) if len(head) <= MAX_HEAD else (b"HTTP/1.1 431", b"HTTP/1.1 400")
    assert answer.startswith(statuses), (len(head), answer[:80])
