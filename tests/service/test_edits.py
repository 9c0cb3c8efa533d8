"""``POST /v1/images/edits`` on the embedded model under the demo policy (red stands in for
an unsafe concept), driven by the official ``openai`` client and by httpx on a real uvicorn."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from PIL import Image

from safety_lora.audit import read_audit_log
from safety_lora.demo import demo_policy
from safety_lora.models import concept_world
from safety_lora.policies.engine import PolicyEngine
from safety_lora.service import BackgroundServer, ServiceSettings, create_app
from safety_lora.service.routes.edits import EditForm

RED, BLUE = (220, 30, 30), (30, 30, 220)
STEPS = {"num_inference_steps": 4, "seed": 7}


def png(colour: tuple[int, ...], size: tuple[int, int] = (32, 32), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def openai_mask() -> bytes:
    """OpenAI's kind of mask: opaque, fully transparent (to repaint) in the middle."""
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (8, 8, 24, 24))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(b64_json: str | None) -> Image.Image:
    assert b64_json is not None
    return Image.open(io.BytesIO(base64.b64decode(b64_json))).convert("RGB")


class Served:
    """The running service: its URL, audit log, app and model."""

    def __init__(self, url: str, audit: Path, app: Any, pipe: Any) -> None:
        self.url, self.audit, self.app, self.pipe = url, audit, app, pipe

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0)

    def post(self, files: list[tuple[str, Any]], **fields: Any) -> httpx.Response:
        data = {"prompt": "a circle", **STEPS, **fields}
        return httpx.post(f"{self.url}/v1/images/edits", files=files, data=data, timeout=60)

    def lines(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in read_audit_log(self.audit) if r["request_id"] == request_id]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    audit_path = tmp_path_factory.mktemp("edits") / "audit.jsonl"
    policy = demo_policy()
    policy = policy.model_copy(
        update={"audit": policy.audit.model_copy(update={"path": audit_path})}
    )
    settings = ServiceSettings(
        max_steps=8, max_image_pixels=64 * 64, max_body_bytes=256 * 1024, max_images=4
    )
    pipe = concept_world()
    app = create_app(settings, pipeline=pipe, engine=PolicyEngine(policy))
    with BackgroundServer(app) as server:
        yield Served(server.url, audit_path, app, pipe)


def test_the_official_client_inpaints_with_a_mask_n2(served: Served) -> None:
    with served.client() as api:
        response = api.images.edit(
            image=("blue.png", png(BLUE), "image/png"),
            mask=("mask.png", openai_mask(), "image/png"),
            prompt="a circle",
            n=2,
            extra_body=STEPS,
        )
    assert response.data is not None and len(response.data) == 2
    images = [decoded(item.b64_json) for item in response.data]
    assert [im.size for im in images] == [(32, 32)] * 2
    # the corner is outside the repainted square: kept blue-ish, not regenerated at random
    r, g, b = images[0].getpixel((1, 1))
    assert b > r and b > g
    safety: dict[str, Any] = response.model_extra["safety"]  # type: ignore[index]
    assert [d["action"] for d in safety["decisions"]] == ["allow", "allow"]
    lines = served.lines(safety["request_id"])
    assert [(r["kind"], r.get("input")) for r in lines] == [
        ("prompt", None),
        ("input", "image"),
        ("input", "mask_image"),
        ("image", None),
        ("image", None),
    ]


def test_a_benign_input_is_edited_as_by_the_base_pipeline(served: Served) -> None:
    from diffusers import StableDiffusionImg2ImgPipeline

    response = served.post([("image", ("blue.png", png(BLUE), "image/png"))], strength=0.5)
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    base = StableDiffusionImg2ImgPipeline.from_pipe(served.pipe)
    expected = base(
        "a circle",
        image=Image.new("RGB", (32, 32), BLUE),
        strength=0.5,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(7),
    ).images[0]
    # steering strength 0 for a prompt that does not ask for red: the base model's edit
    assert decoded(item["b64_json"]).tobytes() == expected.tobytes()


def test_several_images_sent_as_a_list_are_each_edited(served: Served) -> None:
    with served.client() as api:
        response = api.images.edit(
            image=[("a.png", png(BLUE), "image/png"), ("b.png", png((30, 200, 30)), "image/png")],
            prompt="a circle",
            n=2,
            extra_body={**STEPS, "strength": 0.3},
        )
    assert response.data is not None and len(response.data) == 4
    # image-major: two edits of the blue image, then two of the green one (a light edit
    # keeps each input's colour)
    means = [
        decoded(item.b64_json).resize((1, 1), Image.BOX).getpixel((0, 0)) for item in response.data
    ]
    assert [max(range(3), key=m.__getitem__) for m in means] == [2, 2, 1, 1]


def test_an_unsafe_input_is_refused_naming_it_and_audited(served: Served) -> None:
    with served.client() as api, pytest.raises(openai.BadRequestError) as info:
        api.images.edit(
            image=("red.png", png(RED), "image/png"), prompt="a circle", extra_body=STEPS
        )
    error = info.value
    assert error.code == "content_policy_violation"
    assert error.param == "image"
    body: dict[str, Any] = error.body  # type: ignore[assignment]
    decision = body["decision"]
    assert decision["action"] == "block"
    assert decision["rule"] == "inputs.action"
    assert decision["input"] == "image"
    assert "image: sexual 1.00 >= 0.50 -> refuse" in decision["reasons"]
    assert body["message"].startswith("image refused by the safety policy (inputs.action)")
    lines = served.lines(decision["request_id"])
    (verdict,) = [r for r in lines if r["kind"] == "input"]
    assert (verdict["input"], verdict["action"]) == ("image", "block")


def test_an_unsafe_second_image_is_named_by_its_upload(served: Served) -> None:
    files = [
        ("image[]", ("blue.png", png(BLUE), "image/png")),
        ("image[]", ("red.png", png(RED), "image/png")),
    ]
    response = served.post(files)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("content_policy_violation", "image[1]")


@pytest.mark.parametrize(
    ("files", "param", "message"),
    [
        ([("image", ("x.png", b"not an image", "image/png"))], "image", "not a recognised image"),
        ([("image", ("x.png", png(BLUE)[:-30], "image/png"))], "image", "cannot decode image"),
        (
            [
                ("image", ("a.png", png(BLUE), "image/png")),
                ("mask", ("m.png", b"junk", "image/png")),
            ],
            "mask",
            "not a recognised image",
        ),
        (
            [
                ("image", ("a.png", png(BLUE), "image/png")),
                ("mask", ("m.png", png((0, 0, 0, 0), (16, 16), "RGBA"), "image/png")),
            ],
            "mask",
            "mask: 16x16, but image is 32x32",
        ),
    ],
    ids=["not-an-image", "truncated", "bad-mask", "mask-size"],
)
def test_a_corrupt_upload_is_a_400_naming_the_field(
    served: Served, files: list[tuple[str, Any]], param: str, message: str
) -> None:
    response = served.post(files)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_image", param)
    assert message in error["message"]


def test_oversized_uploads_are_refused_as_for_other_images(served: Served) -> None:
    too_many_pixels = served.post([("image", ("big.png", png(BLUE, (100, 100)), "image/png"))])
    too_many_bytes = served.post([("image", ("big.png", b"\0" * 300_000, "image/png"))])
    assert too_many_pixels.status_code == 400
    error = too_many_pixels.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_image", "image")
    assert "100x100 = 10000 pixels, over the limit of 4096" in error["message"]
    assert too_many_bytes.status_code == 413
    assert too_many_bytes.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 3}, "2 image(s) x n=3 is 6 images, over this server's limit of 4 (max_images)"),
        ({"response_format": "url"}, "response_format"),
        ({"background": "transparent"}, "background: Extra inputs are not permitted"),
        ({"strength": 0.1}, "strength=0.1 of num_inference_steps=4 runs no denoising step"),
        ({"strength": 0}, "strength: Input should be greater than 0"),
        ({"num_inference_steps": 99}, "num_inference_steps=99 is over this server's limit"),
    ],
)
def test_requests_over_the_limits_are_400s(
    served: Served, fields: dict[str, Any], message: str
) -> None:
    two = [("image[]", ("a.png", png(BLUE), "image/png"))] * 2
    response = served.post(two, **fields)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_the_openapi_document_describes_the_route(served: Served) -> None:
    document = served.app.openapi()
    operation = document["paths"]["/v1/images/edits"]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body == {"$ref": "#/components/schemas/ImageEditRequest"}
    schema = document["components"]["schemas"]["ImageEditRequest"]
    assert {"image", "mask", "prompt", "n", "size", "strength"} <= set(schema["properties"])
    assert schema["required"] == ["image", "prompt"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GenerationResponse"
    }
    for example in schema["examples"]:
        EditForm.model_validate(example)


def test_a_model_without_edit_pipelines_still_generates_and_says_why_it_cannot_edit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from diffusers import AutoPipelineForInpainting
    from fastapi.testclient import TestClient

    from safety_lora.testing import tiny_pipeline

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("no inpainting for this one")

    monkeypatch.setattr(AutoPipelineForInpainting, "from_pipe", refuse)
    settings = ServiceSettings(max_steps=4)
    app = create_app(settings, pipeline=tiny_pipeline(), engine=PolicyEngine(demo_policy()))
    with TestClient(app) as client:
        edit = client.post(
            "/v1/images/edits",
            files=[("image", ("a.png", png(BLUE), "image/png"))],
            data={"prompt": "a circle"},
        )
        made = client.post(
            "/v1/images/generations", json={"prompt": "a circle", "num_inference_steps": 2}
        )
    assert edit.status_code == 400
    error = edit.json()["error"]
    assert error["code"] == "edits_unavailable"
    assert "has no inpaint pipeline here: no inpainting for this one" in error["message"]
    assert made.status_code == 200
