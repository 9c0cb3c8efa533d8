"""SafetyMiddleware on a small FastAPI app of our own, served by a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from _service_helpers import REFUSED_WORD, b64, png, policy_yaml, unb64_image
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from PIL import Image

from safety_lora.audit import read_audit_log
from safety_lora.guard import SafetyGuard
from safety_lora.middleware import GuardedRoute, SafetyMiddleware
from safety_lora.policies.schema import Policy
from safety_lora.service import BackgroundServer

GREY = (128, 128, 128)
PLAIN = b'{"hello": "world",   "raw": true}'


def make_app(calls: list[str], release: threading.Event) -> FastAPI:
    """An image service of the test's own: PNG route, OpenAI-style JSON route, others."""
    app = FastAPI()

    @app.post("/generate")
    async def generate(request: Request) -> Response:
        calls.append("generate")
        return Response(png("red"), media_type="image/png")

    @app.post("/v1/gen")
    async def gen_json(request: Request) -> Response:
        calls.append("gen_json")
        body = {"created": 1, "data": [{"b64_json": b64(png("red")), "note": "x"}] * 2}
        return Response(json.dumps(body), media_type="application/json")

    @app.post("/stream-image")
    async def stream_image() -> StreamingResponse:
        data = png("red")

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 16):
                yield data[i : i + 16]

        return StreamingResponse(chunks(), media_type="image/png")

    @app.get("/plain")
    async def plain() -> Response:
        return Response(PLAIN, media_type="application/json", headers={"X-Own": "1"})

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first\n"
            # Only a client that already received the first chunk sets `release`.
            released = await asyncio.to_thread(release.wait, 20)
            yield b"released\n" if released else b"buffered\n"

        return StreamingResponse(chunks(), media_type="text/plain")

    return app


ROUTES = [
    GuardedRoute("/generate"),
    GuardedRoute("/v1/gen", prompt_field="input.text"),
    GuardedRoute("/stream-image", prompt_field=None),
]


@contextmanager
def served(tmp_path: Path, *, sexual: float) -> Iterator[tuple[httpx.Client, list[str], Any]]:
    calls: list[str] = []
    release = threading.Event()
    policy = Policy.from_file(policy_yaml(tmp_path / "policy.yaml", sexual=sexual))
    audit = policy.audit.model_copy(update={"path": tmp_path / "audit.jsonl"})
    guard = SafetyGuard(policy.model_copy(update={"audit": audit}))
    app = SafetyMiddleware(make_app(calls, release), guard=guard, routes=ROUTES)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, calls, release


def test_refused_prompt_never_reaches_the_app(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.0) as (client, calls, _):
        refused = client.post("/generate", json={"prompt": f"a {REFUSED_WORD} cat"})
        nested = client.post("/v1/gen", json={"input": {"text": REFUSED_WORD}})
        missing = client.post("/generate", json={"text": "a cat"})
    assert refused.status_code == nested.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "content_policy_violation"
    assert error["decision"]["rule"] == "prompt.rules.violence.refuse_at"
    assert refused.headers["x-safety-decision"] == "refuse"
    assert refused.headers["x-safety-request-id"] == error["decision"]["request_id"]
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_prompt"
    assert calls == []


def test_image_body_replaced_in_place(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.9) as (client, calls, _):
        response = client.post("/generate", json={"prompt": "a cat"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    assert image.size == (32, 32)
    assert image.convert("RGB").getpixel((0, 0)) == GREY
    assert int(response.headers["content-length"]) == len(response.content)
    records = read_audit_log(tmp_path / "audit.jsonl")
    assert [r["kind"] for r in records] == ["prompt", "image"]
    assert {r["request_id"] for r in records} == {response.headers["x-safety-request-id"]}
    assert response.headers["x-safety-decision"] == "replace"
    assert records[1]["action"] == "replace"
    assert calls == ["generate"]


def test_json_images_replaced_at_field_path(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.9) as (client, _, _):
        response = client.post("/v1/gen", json={"input": {"text": "a cat"}})
    body = response.json()
    assert response.status_code == 200
    assert [item["note"] for item in body["data"]] == ["x", "x"]  # the rest is kept
    assert [unb64_image(i["b64_json"]).getpixel((0, 0)) for i in body["data"]] == [GREY] * 2
    assert response.headers["x-safety-decision"] == "replace"


def test_streamed_image_of_a_guarded_route_is_judged(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.9) as (client, _, _):
        response = client.post("/stream-image")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).convert("RGB").getpixel((0, 0)) == GREY


def test_allowed_images_are_byte_identical(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.0) as (client, _, _):
        image = client.post("/generate", json={"prompt": "a cat"})
        as_json = client.post("/v1/gen", json={"input": {"text": "a cat"}})
    assert image.content == png("red")
    assert as_json.json()["data"][0]["b64_json"] == b64(png("red"))


def test_unconfigured_routes_untouched(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.9) as (client, _, _):
        plain = client.get("/plain")
        not_guarded_method = client.get("/generate")
    assert plain.content == PLAIN
    assert plain.headers["x-own"] == "1"
    assert "x-safety-decision" not in plain.headers
    assert not_guarded_method.status_code == 405  # the app's own answer
    assert "x-safety-decision" not in not_guarded_method.headers


def test_unconfigured_streaming_route_still_streams(tmp_path: Path) -> None:
    with served(tmp_path, sexual=0.9) as (client, _, release), client.stream("GET", "/stream") as r:
        lines = r.iter_lines()
        first = next(lines)
        release.set()  # only reachable when the first chunk arrived before the stream ended
        rest = list(lines)
    assert first == "first"
    assert rest == ["released"]


def test_routes_are_required() -> None:
    with pytest.raises(ValueError, match="`routes` is empty"):
        SafetyMiddleware(
            make_app([], threading.Event()), guard=Policy.preset("permissive"), routes=[]
        )
    with pytest.raises(ValueError, match="must start with '/'"):
        GuardedRoute("generate")


def test_an_animated_response_with_an_unsafe_later_frame_is_not_passed_on(
    tmp_path: Path,
) -> None:
    from PIL import ImageDraw

    def disc(colour: tuple[int, int, int]) -> Image.Image:
        image = Image.new("RGB", (32, 32), GREY)
        ImageDraw.Draw(image).ellipse((8, 8, 24, 24), fill=colour)
        return image

    def gif(*frames: Image.Image) -> bytes:
        buffer = io.BytesIO()
        frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
        return buffer.getvalue()

    bodies = {"unsafe": gif(disc((40, 70, 220)), disc((215, 35, 35))),
              "safe": gif(disc((40, 70, 220)), disc((40, 180, 50)))}  # fmt: skip
    inner = FastAPI()

    @inner.post("/animate")
    async def animate(request: Request) -> Response:
        kind = (await request.json())["prompt"]
        return Response(bodies[kind], media_type="image/gif")

    policy = Policy.from_dict(
        {
            "classifiers": [{"kind": "concept_world", "unsafe": {"sexual": ["red"]}}],
            "categories": {"sexual": {"threshold": 0.5, "action": "block"}},
        }
    )
    app = SafetyMiddleware(inner, guard=SafetyGuard(policy), routes=[GuardedRoute("/animate")])
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url) as client:
        unsafe = client.post("/animate", json={"prompt": "unsafe"})
        safe = client.post("/animate", json={"prompt": "safe"})
    assert unsafe.status_code == 200 and unsafe.content != bodies["unsafe"]
    placeholder = Image.open(io.BytesIO(unsafe.content)).convert("RGB")
    assert getattr(placeholder, "n_frames", 1) == 1 and placeholder.getpixel((1, 1)) == GREY
    assert safe.content == bodies["safe"]  # judged frame by frame, then passed on untouched


# -- uploads: judged before the app sees them ---------------------------------------------------

RED_PNG, BLUE_PNG = png("#dc1e1e"), png("#1e1edc")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + b64(data)


@contextmanager
def uploads_served(
    tmp_path: Path, *, inputs: str = "refuse"
) -> Iterator[tuple[httpx.Client, list[bytes], Path]]:
    """An app taking uploads (multipart, JSON, raw base64) behind the middleware; red is
    unsafe, and an unsafe input gets ``inputs``. Yields a client, the bodies the app got and
    the audit log."""
    received: list[bytes] = []
    inner = FastAPI()

    @inner.post("/edit")
    async def edit(request: Request) -> Response:
        received.append(await request.body())
        async with request.form() as form:
            upload = form["image"]
            assert not isinstance(upload, str)
            echoed = await upload.read()
        return Response(
            json.dumps({"data": [{"b64_json": b64(echoed)}]}), media_type="application/json"
        )

    @inner.post("/chat")
    async def chat(request: Request) -> Response:
        received.append(await request.body())
        return Response(b"{}", media_type="application/json")

    audit = tmp_path / "audit.jsonl"
    policy = Policy.from_dict(
        {
            "classifiers": [{"kind": "concept_world", "unsafe": {"sexual": ["red"]}}],
            "categories": {"sexual": {"threshold": 0.5, "action": "block"}},
            "inputs": {"action": inputs},
            "prompt": {
                "classifiers": [
                    {"kind": "prompt_rules", "extra_terms": {"violence": [REFUSED_WORD]}}
                ],
                "rules": {"violence": {"steer_at": 0.3, "refuse_at": 0.8}},
            },
            "audit": {"path": str(audit)},
        }
    )
    routes = [
        GuardedRoute("/edit", upload_fields=("init_image",)),
        GuardedRoute("/chat", prompt_field="messages.0.content", upload_fields=("init_images.*",)),
    ]
    app = SafetyMiddleware(inner, guard=policy, routes=routes, max_upload_images=3)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client, received, audit


def edit_upload(client: httpx.Client, image: bytes, prompt: str = "a circle") -> httpx.Response:
    files = [("image", ("in.png", image, "image/png"))]
    return client.post("/edit", files=files, data={"prompt": prompt})


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/chat", json={"messages": [{"content": "a circle"}], **body})


def test_an_unsafe_upload_is_refused_before_the_app(tmp_path: Path) -> None:
    nested = {"messages": [{"content": "a circle", "image": {"url": data_url(RED_PNG)}}]}
    with uploads_served(tmp_path) as (client, received, audit):
        multipart = edit_upload(client, RED_PNG)
        as_json = client.post("/chat", json=nested)
        raw = chat(client, init_images=[b64(BLUE_PNG), b64(RED_PNG)])
        form_field = client.post(  # multipart: a raw base64 text field and a benign file
            "/edit",
            data={"prompt": "a circle", "init_image": b64(RED_PNG)},
            files=[("other", ("other.png", BLUE_PNG, "image/png"))],
        )
        urlencoded = client.post(
            "/edit",
            content=urlencode({"prompt": "a circle", "mask": data_url(RED_PNG)}),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        refused_prompt = edit_upload(client, BLUE_PNG, prompt=f"a {REFUSED_WORD}")
    assert received == []
    for response, name in [(multipart, "image"), (as_json, "messages.0.image.url"),
                           (raw, "init_images.1"), (form_field, "init_image"),
                           (urlencoded, "mask")]:  # fmt: skip
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("content_policy_violation", name)
        assert error["decision"]["input"] == name
        assert error["decision"]["action"] == "block"
        assert response.headers["x-safety-decision"] == "refuse"
        assert response.headers["x-safety-request-id"] == error["decision"]["request_id"]
    assert refused_prompt.json()["error"]["decision"]["rule"] == "prompt.rules.violence.refuse_at"
    lines = [r for r in read_audit_log(audit) if r["kind"] == "input"]
    assert [(r["input"], r["action"]) for r in lines] == [
        ("image", "block"),
        ("messages.0.image.url", "block"),
        ("init_images.0", "allow"),
        ("init_images.1", "block"),
        ("init_image", "block"),
        ("other", "allow"),
        ("mask", "block"),
    ]
    assert lines[0]["request_id"] == multipart.headers["x-safety-request-id"]


def test_a_benign_upload_reaches_the_app_unchanged(tmp_path: Path) -> None:
    with uploads_served(tmp_path) as (client, received, _):
        multipart = edit_upload(client, BLUE_PNG)
        as_json = chat(client, image=data_url(BLUE_PNG))
    assert multipart.status_code == as_json.status_code == 200
    assert multipart.headers["x-safety-decision"] == "allow"
    assert multipart.json()["data"][0]["b64_json"] == b64(BLUE_PNG)  # echoed, judged, kept
    sent_json = json.dumps({"messages": [{"content": "a circle"}], "image": data_url(BLUE_PNG)})
    assert json.loads(received[1]) == json.loads(sent_json)
    assert b"\r\n\r\n" + BLUE_PNG + b"\r\n" in received[0]  # the multipart body, byte for byte


def test_an_upload_the_policy_replaces_is_rewritten_for_the_app(tmp_path: Path) -> None:
    with uploads_served(tmp_path, inputs="replace") as (client, received, _):
        multipart = edit_upload(client, RED_PNG)
        as_json = chat(client, image=data_url(RED_PNG))
    assert multipart.status_code == as_json.status_code == 200
    assert multipart.headers["x-safety-decision"] == "replace"
    echoed = unb64_image(multipart.json()["data"][0]["b64_json"])
    assert (
        echoed.size == (32, 32) and echoed.getpixel((1, 1)) == GREY
    )  # the app got the placeholder
    rewritten = json.loads(received[1])["image"]
    assert rewritten.startswith("data:image/png;base64,")
    assert unb64_image(rewritten.split(",", 1)[1]).getpixel((1, 1)) == GREY


def test_uploads_that_cannot_be_judged_are_refused(tmp_path: Path) -> None:
    with uploads_served(tmp_path) as (client, received, _):
        garbage = edit_upload(client, b"not an image at all")
        bad_url = chat(client, image="data:image/png;base64,AAAA")
        too_many = chat(client, init_images=[b64(BLUE_PNG)] * 4)
    assert received == []
    assert garbage.status_code == bad_url.status_code == too_many.status_code == 400
    assert (garbage.json()["error"]["code"], garbage.json()["error"]["param"]) == (
        "invalid_image",
        "image",
    )
    assert "upload image cannot be judged: not a recognised image format" in garbage.text
    assert bad_url.json()["error"]["param"] == "image"
    assert too_many.json()["error"]["code"] == "too_many_images"
    assert garbage.headers["x-safety-decision"] == "error"
