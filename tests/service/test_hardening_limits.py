"""Every byte a request brings is bounded, and the audit log is checked before it is needed.

Text caps (characters, texts, parts) on every route, refused before any classifier runs; the
server's own limits (header size, read deadlines, connections) on a real uvicorn; key-less
routes only by choice; an audit destination that cannot be written refused at start-up and,
when it fails while serving, answered with a 503 envelope until it recovers by itself.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _service_helpers import REFUSED_WORD, b64, png, policy_yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from safety_lora.audit import AuditLog, AuditWriteError, read_audit_log
from safety_lora.cli import app as cli
from safety_lora.service import BackgroundServer, ServiceSettings, create_app, hash_api_key
from safety_lora.service.text_limits import ITEMS_CEILING, TEXT_CHARS_CEILING
from safety_lora.testing import tiny_pipeline

KEY = "hardening-key"


def _settings(tmp_path: Path, **values: Any) -> ServiceSettings:
    base: dict[str, Any] = {
        "policy": str(policy_yaml(tmp_path / "policy.yaml", sexual=0.0)),
        "audit_path": tmp_path / "audit.jsonl",
        "generation": False,
    }
    return ServiceSettings(**{**base, **values})


@contextmanager
def client_for(tmp_path: Path, pipeline: Any = None, **values: Any) -> Iterator[TestClient]:
    """The app in-process (its lifespan run), for checks that need no real server."""
    app = create_app(_settings(tmp_path, **values), pipeline=pipeline)
    with TestClient(app) as client:
        yield client


def _audited(tmp_path: Path) -> int:
    audit = tmp_path / "audit.jsonl"
    return len(read_audit_log(audit)) if audit.exists() else 0


def _error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    message: str = response.json()["error"]["message"]
    return message


# -- text caps ----------------------------------------------------------------------------------

LIMITS = {"max_text_chars": 20, "max_texts": 3, "max_parts": 4}


def test_moderations_texts_are_capped_before_any_work(tmp_path: Path) -> None:
    with client_for(tmp_path, **LIMITS) as client:
        long = client.post("/v1/moderations", json={"input": "x" * 21})
        many = client.post("/v1/moderations", json={"input": ["a cat"] * 4})
        long_item = client.post("/v1/moderations", json={"input": ["a cat", "y" * 25]})
        parts = [{"type": "text", "text": "a cat"}] * 5
        many_parts = client.post("/v1/moderations", json={"input": parts})
        long_part = client.post(
            "/v1/moderations",
            json={"input": [{"type": "text", "text": "ok"}, {"type": "text", "text": "z" * 30}]},
        )
        assert _audited(tmp_path) == 0  # nothing was judged
        at_limits = client.post("/v1/moderations", json={"input": ["x" * 20] * 3})
        at_parts = client.post("/v1/moderations", json={"input": parts[:4]})
    assert _error(long) == "input: 21 characters, over this server's limit of 20 (max_text_chars)"
    assert _error(many) == "input: 4 texts, over this server's limit of 3 (max_texts)"
    assert _error(long_item).startswith("input[1]: 25 characters, over this server's limit of 20")
    assert _error(many_parts) == (
        "input: 5 content parts, over this server's limit of 4 (max_parts)"
    )
    assert _error(long_part).startswith("input[1].text: 30 characters")
    assert long.json()["error"]["code"] == "invalid_request_error"
    assert at_limits.status_code == at_parts.status_code == 200
    assert len(at_limits.json()["results"]) == 3


def test_the_prompt_route_is_capped(tmp_path: Path) -> None:
    with client_for(tmp_path, **LIMITS) as client:
        long = client.post("/v1/moderations/prompt", json={"input": "x" * 21})
        many = client.post("/v1/moderations/prompt", json={"input": ["a"] * 4})
        long_item = client.post("/v1/moderations/prompt", json={"input": ["a", "b" * 21]})
        empty = client.post("/v1/moderations/prompt", json={"input": []})
        assert _audited(tmp_path) == 0
        fine = client.post("/v1/moderations/prompt", json={"input": ["a cat", REFUSED_WORD]})
    assert "(max_text_chars)" in _error(long) and "21 characters" in _error(long)
    assert _error(many) == "input: 4 prompts, over this server's limit of 3 (max_texts)"
    assert _error(long_item).startswith("input[1]: 21 characters")
    assert _error(empty) == "input: give at least one prompt"
    assert [r["action"] for r in fine.json()["results"]] == ["allow", "refuse"]


def test_the_image_routes_prompt_is_capped(tmp_path: Path) -> None:
    with client_for(tmp_path, **LIMITS) as client:
        long = client.post("/v1/moderations/image", json={"input": b64(png()), "prompt": "p" * 21})
        form = client.post(
            "/v1/moderations/image",
            files={"file": ("a.png", png(), "image/png")},
            data={"prompt": "p" * 22},
        )
        assert _audited(tmp_path) == 0
        fine = client.post("/v1/moderations/image", json={"input": b64(png()), "prompt": "a cat"})
    assert _error(long).startswith("prompt: 21 characters")
    assert _error(form).startswith("prompt: 22 characters")
    assert fine.status_code == 200


def test_generation_prompts_follow_the_one_setting(tmp_path: Path) -> None:
    with client_for(tmp_path, tiny_pipeline(), generation=True, max_text_chars=12) as client:
        long = client.post("/v1/images/generations", json={"prompt": "a cat on a sofa"})
        assert _audited(tmp_path) == 0  # refused before its prompt was checked
        fine = client.post(
            "/v1/images/generations", json={"prompt": "a cat", "num_inference_steps": 2}
        )
    assert _error(long) == "prompt: 15 characters, over this server's limit of 12 (max_text_chars)"
    assert fine.status_code == 200


def test_the_default_text_cap_is_4000_characters(tmp_path: Path) -> None:
    with client_for(tmp_path) as client:
        over = client.post("/v1/moderations/prompt", json={"input": "a" * 4001})
        at = client.post("/v1/moderations/prompt", json={"input": "a " * 2000})
    assert "4001 characters, over this server's limit of 4000 (max_text_chars)" in _error(over)
    assert at.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"input": "x" * 16_000_000},
        {"input": ["a"] * 100_000},
        {"input": [{"type": "text", "text": "a"}] * 100_000},
    ],
    ids=["16-MB-string", "100k-strings", "100k-parts"],
)
def test_huge_inputs_are_refused_by_the_schema(tmp_path: Path, body: dict[str, Any]) -> None:
    with client_for(tmp_path) as client:
        refused = client.post("/v1/moderations", json=body)
    message = _error(refused)
    assert f"over the {TEXT_CHARS_CEILING} any server accepts" in message or (
        f"over the {ITEMS_CEILING} any server accepts" in message
    )
    assert refused.json()["error"]["code"] == "invalid_request"
    assert _audited(tmp_path) == 0


def test_the_settings_cannot_raise_a_cap_over_its_ceiling() -> None:
    with pytest.raises(ValueError, match="max_text_chars"):
        ServiceSettings(max_text_chars=TEXT_CHARS_CEILING + 1)
    with pytest.raises(ValueError, match="max_parts"):
        ServiceSettings(max_parts=ITEMS_CEILING + 1)


# -- key-less routes ----------------------------------------------------------------------------

OPS = ["/metrics", "/docs", "/redoc", "/openapi.json"]


def test_ops_routes_need_the_key_when_keys_are_configured(tmp_path: Path) -> None:
    with client_for(tmp_path, api_keys=[hash_api_key(KEY)]) as client:
        anonymous = {route: client.get(route).status_code for route in OPS}
        keyed = {
            route: client.get(route, headers={"Authorization": f"Bearer {KEY}"}).status_code
            for route in OPS
        }
        health = client.get("/healthz")
    assert anonymous == dict.fromkeys(OPS, 401)
    assert keyed == dict.fromkeys(OPS, 200)
    assert health.status_code == 200


def test_public_routes_is_the_operators_choice(tmp_path: Path) -> None:
    keyed = {"api_keys": [hash_api_key(KEY)], "public_routes": ["/metrics"]}
    with client_for(tmp_path, **keyed) as client:
        metrics, docs = client.get("/metrics"), client.get("/docs")
    (tmp_path / "open").mkdir()
    with client_for(tmp_path / "open") as client:  # no keys: loopback only, all open
        open_ = {route: client.get(route).status_code for route in OPS}
    assert metrics.status_code == 200 and docs.status_code == 401
    assert open_ == dict.fromkeys(OPS, 200)
    with pytest.raises(ValueError, match="public_routes"):
        ServiceSettings(public_routes=["/v1/moderations"])


# -- the server's own limits (a real uvicorn) -----------------------------------------------------


@contextmanager
def real_server(tmp_path: Path, **values: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(_settings(tmp_path, **values))) as server:
        yield server


def _connect(server: BackgroundServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a reset after its answer counts as closed)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_a_50_mb_authorization_header_is_cut_off_at_the_limit(tmp_path: Path) -> None:
    with real_server(tmp_path, api_keys=[hash_api_key(KEY)]) as server:
        with _connect(server) as sock:
            sock.sendall(b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
            sent, chunk = 0, b"a" * 65536
            try:
                while sent < 50 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # the server closed the connection
                pass
            answer = _read_all(sock)
        health = httpx.get(f"{server.url}/healthz", timeout=10)
    assert sent < 50 * 1024 * 1024  # it stopped reading long before the end
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
    assert health.status_code == 200


def test_a_head_over_max_header_bytes_gets_431_however_it_arrives(tmp_path: Path) -> None:
    with real_server(tmp_path, max_header_bytes=4096) as server:
        url = f"{server.url}/healthz"
        small = httpx.get(url, headers={"x-pad": "a" * 3000}, timeout=10)
        whole = httpx.get(url, headers={"x-pad": "a" * 5000}, timeout=10)  # one read
        many = httpx.get(url, headers={f"x-{i}": "v" * 60 for i in range(80)}, timeout=10)
        with _connect(server) as sock:  # pipelined: the second head is read with the first
            first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            second = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-pad: " + b"a" * 5000
            sock.sendall(first + second + b"\r\n\r\n")
            pipelined = _read_all(sock)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert small.status_code == 200
    assert whole.status_code == many.status_code == 431
    assert whole.json()["error"]["code"] == "request_header_too_large"
    one, two = pipelined.split(b"HTTP/1.1 ")[1:]
    assert one.startswith(b"200") and two.startswith(b"400")
    assert 'safety_lora_rejected_requests_total{reason="header_limit"} 2.0' in metrics


def test_a_slow_client_is_dropped_at_the_header_deadline(tmp_path: Path) -> None:
    with real_server(tmp_path, header_timeout_s=0.5) as server:
        with _connect(server) as idle:
            idle.sendall(b"G")
            idle_answer = _read_all(idle)  # closed by the server, not by the 10 s socket timeout
        with _connect(server) as trickle:
            began, closed = time.monotonic(), False
            while time.monotonic() - began < 10:  # a byte every 50 ms: active, never complete
                try:
                    trickle.sendall(b"x")
                except OSError:
                    closed = True
                    break
                time.sleep(0.05)
        fine = httpx.get(f"{server.url}/healthz", timeout=10)
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert idle_answer == b""
    assert closed
    assert fine.status_code == 200
    assert 'safety_lora_rejected_requests_total{reason="read_timeout"} 2.0' in metrics


def test_a_body_that_never_completes_is_dropped(tmp_path: Path) -> None:
    with real_server(tmp_path, body_timeout_s=0.5) as server, _connect(server) as sock:
        sock.sendall(
            b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b'content-length: 100\r\n\r\n{"input": '
        )
        answer = _read_all(sock)
    assert answer == b""  # dropped; nothing was judged
    assert _audited(tmp_path) == 0


def test_connections_over_the_cap_get_503_and_are_closed(tmp_path: Path) -> None:
    with real_server(tmp_path, max_connections=3) as server, ExitStack() as stack:
        held = [stack.enter_context(_connect(server)) for _ in range(3)]
        answers = []
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open
            answers.append(sock.recv(65536))
        with _connect(server) as one_more:
            extra = _read_all(one_more)
        held[0].close()
        time.sleep(0.2)  # the server sees the close
        again = httpx.get(f"{server.url}/healthz", timeout=10)
    assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
    status, _, body = extra.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 503")
    assert b'"code": "too_many_connections"' in body
    assert again.status_code == 200


def test_an_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    with real_server(tmp_path, keep_alive_timeout_s=1) as server, _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = _read_all(sock)  # the answer, then the close after 1 s idle
    assert answer.startswith(b"HTTP/1.1 200")


# -- the audit log --------------------------------------------------------------------------------


def test_an_audit_path_that_cannot_be_written_is_refused_at_start(tmp_path: Path) -> None:
    folder = tmp_path / "a-folder"
    folder.mkdir()
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(AuditWriteError, match=re.escape(f"audit log {folder} cannot be written")):
        create_app(_settings(tmp_path, audit_path=folder))
    with pytest.raises(AuditWriteError, match=re.escape(str(not_a_folder / "audit.jsonl"))):
        create_app(_settings(tmp_path, audit_path=not_a_folder / "audit.jsonl"))


def test_serve_refuses_to_start_with_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    policy = policy_yaml(tmp_path / "policy.yaml", sexual=0.0)
    args = ["serve", "--no-generation", "--policy", str(policy), "--audit-log", str(folder)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert f"audit log {folder} cannot be written: Is a directory" in output
    assert "--audit-log" in output and "Traceback" not in output


def test_moderate_says_an_audit_failure_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = policy_yaml(tmp_path / "policy.yaml", sexual=0.0)
    with policy.open("a", encoding="utf-8") as fh:
        fh.write("audit: {path: logs}\n")
    (tmp_path / "logs").mkdir()
    at_start = CliRunner().invoke(cli, ["moderate", "--prompt", "a cat", "--policy", str(policy)])
    (tmp_path / "logs").rmdir()

    def fail(self: AuditLog, records: Any) -> None:  # the disk fills up mid-run
        raise AuditWriteError(28, f"audit log {self.path} cannot be written: No space left")

    monkeypatch.setattr(AuditLog, "write", fail)
    mid_run = CliRunner().invoke(cli, ["moderate", "--prompt", "a cat", "--policy", str(policy)])
    for result, why in ((at_start, "Is a directory"), (mid_run, "No space left")):
        assert result.exit_code == 2
        assert why in result.output and "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/moderations/prompt", {"input": "a cat"}),
        ("/v1/moderations", {"input": ["a cat"]}),
        ("/v1/moderations/image", {"input": b64(png())}),
    ],
)
def test_a_failing_audit_log_fails_closed_with_503_and_recovers(
    tmp_path: Path, route: str, body: dict[str, Any]
) -> None:
    audit = tmp_path / "audit.jsonl"
    with client_for(tmp_path) as client:
        assert client.post(route, json=body).status_code == 200
        audit.unlink()
        audit.mkdir()  # the destination stops being writable
        refused = client.post(route, json=body)
        health = client.get("/healthz")
        metrics = client.get("/metrics").text
        audit.rmdir()  # ... and is writable again
        recovered = client.get("/healthz")
        again = client.post(route, json=body)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "audit_unavailable"
    assert "results" not in refused.json()  # no unaudited verdict
    assert health.status_code == 503
    assert health.json()["status"] == "unavailable"
    assert health.json()["reason"] == "the audit log cannot be written"
    assert "safety_lora_audit_failures_total 1.0" in metrics
    assert recovered.status_code == 200 and recovered.json()["status"] == "ok"
    assert again.status_code == 200
    assert len(read_audit_log(audit)) >= 1  # written again after the recovery


def test_a_write_that_succeeds_again_clears_the_failure(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    log = AuditLog(audit)
    audit.mkdir()
    with pytest.raises(AuditWriteError, match="Is a directory"):
        log.write([{"kind": "prompt"}])
    assert log.failure is not None and str(audit) in log.failure
    audit.rmdir()
    log.write([{"kind": "prompt"}])
    assert log.failure is None
    assert read_audit_log(audit) == [{"kind": "prompt"}]


def test_serve_makes_room_for_max_connections_or_says_why_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resource

    from safety_lora.service.server import FD_RESERVE, fit_open_files

    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "setrlimit", lambda _, limits: raised.append(limits))
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 4096))
    fit_open_files(1000)
    assert raised == [(1000 + FD_RESERVE, 4096)]  # the soft limit raised to fit
    monkeypatch.setattr(resource, "getrlimit", lambda _: (256, 512))
    with pytest.raises(ValueError, match=r"max_connections=1000 needs 1128 open files.*512"):
        fit_open_files(1000)
