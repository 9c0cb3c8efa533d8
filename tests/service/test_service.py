"""The HTTP service, served by a real uvicorn on 127.0.0.1 and driven with httpx."""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _service_helpers import REFUSED_WORD, b64, png, policy_yaml, unb64_image

from safety_lora.audit import read_audit_log
from safety_lora.service import BackgroundServer, ServiceSettings, create_app, hash_api_key

GREY = (128, 128, 128)


@contextmanager
def served(
    tmp_path: Path, *, pipeline: Any = None, sexual: float = 0.9, **settings: Any
) -> Iterator[tuple[httpx.Client, Path]]:
    """Serve a test policy (replace when sexual >= 0.5); yield a client and the audit log."""
    audit = tmp_path / "audit.jsonl"
    values: dict[str, Any] = {
        "policy": str(policy_yaml(tmp_path / "policy.yaml", sexual=sexual)),
        "audit_path": audit,
        "generation": pipeline is not None,
        **settings,
    }
    app = create_app(ServiceSettings(**values), pipeline=pipeline)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, audit


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (1-bit grey) with one tiny IDAT chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def blocking_pipeline() -> Iterator[tuple[Any, threading.Event, threading.Event]]:
    """The tiny SD pipeline whose UNet waits for ``release`` (after setting ``started``)."""
    from safety_lora.testing import tiny_pipeline

    pipe = tiny_pipeline()
    started, release = threading.Event(), threading.Event()

    def hold(module: Any, args: Any) -> None:
        started.set()
        release.wait(60)

    handle = pipe.unet.register_forward_pre_hook(hold)
    yield pipe, started, release
    release.set()
    handle.remove()


def generate(client: httpx.Client, prompt: str = "a cat", **extra: Any) -> httpx.Response:
    body = {"prompt": prompt, "num_inference_steps": 2, "seed": 0, **extra}
    return client.post("/v1/images/generations", json=body)


# -- binding and keys ---------------------------------------------------------------------------


def test_open_service_refuses_other_addresses() -> None:
    with pytest.raises(ValueError, match=r"'0\.0\.0\.0' is not a loopback address"):
        ServiceSettings(host="0.0.0.0")
    keyed = ServiceSettings(host="0.0.0.0", api_keys=[hash_api_key("k")])
    assert keyed.host == "0.0.0.0"


def test_open_service_says_so_at_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with (
        caplog.at_level(logging.WARNING, logger="safety_lora.service"),
        served(tmp_path) as (
            client,
            _,
        ),
    ):
        assert client.get("/healthz").json()["status"] == "ok"
    assert any("no API keys configured" in r.getMessage() for r in caplog.records)


def test_api_keys_401(tmp_path: Path) -> None:
    with served(tmp_path, api_keys=[hash_api_key("right-key")]) as (client, _):
        body = {"input": "a cat"}
        missing = client.post("/v1/moderations/prompt", json=body)
        wrong = client.post(
            "/v1/moderations/prompt", json=body, headers={"Authorization": "Bearer wrong"}
        )
        right = client.post(
            "/v1/moderations/prompt", json=body, headers={"Authorization": "Bearer right-key"}
        )
        health = client.get("/healthz")
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert right.status_code == 200
    assert health.status_code == 200  # liveness needs no key


# -- limits -------------------------------------------------------------------------------------


def test_body_limit_413(tmp_path: Path) -> None:
    with served(tmp_path, max_body_bytes=4096) as (client, audit):
        small = client.post("/v1/moderations/image", json={"input": b64(png())})
        big = client.post("/v1/moderations/image", json={"input": "A" * 10_000})
    assert small.status_code == 200
    assert big.status_code == 413
    assert "over the limit of 4096 bytes" in big.json()["error"]["message"]
    assert len(read_audit_log(audit)) == 1  # the rejected request did no work


def test_rate_limit_429_per_key(tmp_path: Path) -> None:
    keys = {"a": hash_api_key("key-a"), "b": hash_api_key("key-b")}
    settings = {"api_keys": list(keys.values()), "rate_limit_per_minute": 1, "rate_limit_burst": 2}
    with served(tmp_path, **settings) as (client, _):

        def call(key: str) -> httpx.Response:
            return client.post(
                "/v1/moderations/prompt",
                json={"input": "a cat"},
                headers={"Authorization": f"Bearer {key}"},
            )

        codes_a = [call("key-a").status_code for _ in range(3)]
        last = call("key-a")
        other = call("key-b")
    assert codes_a == [200, 200, 429]
    assert last.status_code == 429
    assert int(last.headers["retry-after"]) >= 1
    assert other.status_code == 200  # limits are per key


def test_queue_full_503(tmp_path: Path, blocking_pipeline: Any) -> None:
    pipe, started, release = blocking_pipeline
    with (
        served(tmp_path, pipeline=pipe, max_concurrency=1, queue_size=1) as (client, _),
        ThreadPoolExecutor(2) as pool,
    ):
        first = pool.submit(generate, client)
        assert started.wait(60)
        second = pool.submit(generate, client)
        for _ in range(600):  # until the second request waits in the queue
            if client.get("/healthz").json()["queued"] == 1:
                break
            threading.Event().wait(0.05)
        third = client.post("/v1/moderations/prompt", json={"input": "a cat"})
        release.set()
        answers = [first.result(), second.result()]
    assert third.status_code == 503
    assert third.json()["error"]["code"] == "server_busy"
    assert [a.status_code for a in answers] == [200, 200]


# -- images -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        (b64(b"plain text, not an image"), "not a recognised image format"),
        (b64(png()[:-30]), "cannot decode image"),
        ("data:image/png,xyz", "data URL must look like"),
    ],
    ids=["base64", "not-an-image", "truncated", "data-url"],
)
def test_bad_image_400(tmp_path: Path, payload: str, message: str) -> None:
    with served(tmp_path) as (client, _):
        response = client.post("/v1/moderations/image", json={"input": payload})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"
    assert message in response.json()["error"]["message"]


def test_decompression_bombs_400(tmp_path: Path) -> None:
    with served(tmp_path, max_image_pixels=1_000_000) as (client, _):
        over_limit = client.post(
            "/v1/moderations/image", json={"input": b64(png_header(3000, 3000))}
        )
        bomb = client.post(
            "/v1/moderations/image",
            files=[("file", ("bomb.png", png_header(30_000, 30_000), "image/png"))],
        )
    assert over_limit.status_code == 400
    assert "3000x3000 = 9000000 pixels, over the limit of 1000000" in over_limit.text
    assert bomb.status_code == 400
    assert "over the limit of 1000000 pixels (decompression bomb)" in bomb.text


def test_image_moderation_replaces_and_audits(tmp_path: Path) -> None:
    with served(tmp_path) as (client, audit):
        as_json = client.post(
            "/v1/moderations/image",
            json={"input": [b64(png("red")), b64(png("blue"))], "return_images": True},
            headers={"X-Request-ID": "req-42"},
        )
        as_file = client.post(
            "/v1/moderations/image", files=[("file", ("a.png", png(), "image/png"))]
        )
    assert as_json.status_code == 200
    assert as_json.headers["x-request-id"] == "req-42"
    body = as_json.json()
    assert body["id"] == "req-42"
    assert [r["action"] for r in body["results"]] == ["replace", "replace"]
    assert body["results"][0]["category_scores"] == {"sexual": 0.9}
    assert unb64_image(body["results"][0]["b64_json"]).getpixel((0, 0)) == GREY
    assert as_file.status_code == 200
    assert as_file.json()["results"][0]["b64_json"] is None
    records = read_audit_log(audit)
    assert [r["request_id"] for r in records] == ["req-42", "req-42", as_file.json()["id"]]
    assert {r["action"] for r in records} == {"replace"}


def test_prompt_moderation_policy_and_metrics(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.0) as (client, audit):
        prompts = client.post(
            "/v1/moderations/prompt", json={"input": ["a cat", f"a {REFUSED_WORD} cat"]}
        )
        policy = client.get("/v1/policy")
        metrics = client.get("/metrics")
    results = prompts.json()["results"]
    assert [(r["flagged"], r["action"]) for r in results] == [(False, "allow"), (True, "refuse")]
    assert results[1]["decision"]["matches"] == [f"violence:{REFUSED_WORD}"]
    assert [r["kind"] for r in read_audit_log(audit)] == ["prompt", "prompt"]
    assert policy.json()["name"] == "test-replace"
    assert policy.json()["policy"]["classifiers"][0]["kind"] == "static"
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'safety_lora_decisions_total{action="refuse",kind="prompt"} 1.0' in metrics.text
    assert (
        'safety_lora_http_requests_total{route="/v1/moderations/prompt",status="200"} 1.0'
        in metrics.text
    )


def test_parallel_requests_one_audit_line_each(tmp_path: Path) -> None:
    n = 12
    with (
        served(tmp_path, max_concurrency=3, queue_size=n) as (client, audit),
        ThreadPoolExecutor(n) as pool,
    ):
        answers = list(
            pool.map(
                lambda i: client.post(
                    "/v1/moderations/image",
                    json={"input": b64(png())},
                    headers={"X-Request-ID": f"parallel-{i}"},
                ),
                range(n),
            )
        )
    assert [a.status_code for a in answers] == [200] * n
    records = read_audit_log(audit)
    assert sorted(r["request_id"] for r in records) == sorted(f"parallel-{i}" for i in range(n))


# -- generation ---------------------------------------------------------------------------------


def test_generation_on_the_tiny_model(tmp_path: Path) -> None:
    from safety_lora.testing import tiny_pipeline

    with served(tmp_path, pipeline=tiny_pipeline(), sexual=0.9) as (client, audit):
        ok = generate(client, n=2)
        refused = generate(client, f"a {REFUSED_WORD}")
        too_many = generate(client, n=99)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert len(body["data"]) == 2
    image = unb64_image(body["data"][0]["b64_json"])
    assert image.size == (32, 32)
    assert image.getpixel((0, 0)) == GREY  # static sexual 0.9 -> replace
    assert [d["action"] for d in body["safety"]["decisions"]] == ["replace", "replace"]
    assert body["safety"]["prompt"]["action"] == "allow"
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "content_policy_violation"
    assert refused.json()["error"]["decision"]["rule"] == "prompt.rules.violence.refuse_at"
    assert too_many.status_code == 400
    records = read_audit_log(audit)
    assert [r.get("kind", "image") for r in records] == ["prompt", "image", "image", "prompt"]
    # every line of the generation request carries the request's own id
    assert len({r["request_id"] for r in records[:3]}) == 1
    assert records[1]["request_id"] == body["safety"]["request_id"]


def test_graceful_shutdown_finishes_in_flight(tmp_path: Path, blocking_pipeline: Any) -> None:
    pipe, started, release = blocking_pipeline
    settings = ServiceSettings(
        policy=str(policy_yaml(tmp_path / "policy.yaml", sexual=0.0)), generation=True
    )
    server = BackgroundServer(create_app(settings, pipeline=pipe)).start()
    client = httpx.Client(base_url=server.url, timeout=60)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(generate, client)
        assert started.wait(60)
        server.stop(wait=False)
        for _ in range(600):  # until the listening socket is closed
            try:
                httpx.get(f"{server.url}/healthz", timeout=1)
            except httpx.ConnectError:
                break
            except (httpx.TimeoutException, httpx.RemoteProtocolError):
                pass  # accepted just before the socket closed, or dropped during shutdown
            threading.Event().wait(0.05)
        else:
            pytest.fail("the server kept accepting connections after shutdown began")
        release.set()
        answer = in_flight.result()
    client.close()
    assert server.join(60)
    assert answer.status_code == 200
    assert [d["action"] for d in answer.json()["safety"]["decisions"]] == ["allow"]


# -- command line -------------------------------------------------------------------------------


def test_cli_hash_key_and_open_bind_refusal() -> None:
    import typer
    from typer.testing import CliRunner

    from safety_lora.cli import serve

    app = typer.Typer()
    serve.register(app)
    runner = CliRunner()
    hashed = runner.invoke(app, ["serve", "hash-key"], input="secret\n")
    fresh = runner.invoke(app, ["serve", "hash-key", "--new"])
    refused = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--no-generation"])
    assert hashed.exit_code == 0
    assert hashed.output.strip() == hash_api_key("secret")
    key_line, hash_line = fresh.output.splitlines()
    assert hash_line.removeprefix("hash: ") == hash_api_key(key_line.removeprefix("key:  "))
    assert refused.exit_code == 2
    assert "not a loopback address" in refused.output
