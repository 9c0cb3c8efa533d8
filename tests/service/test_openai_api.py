"""The official ``openai`` client against ``safety-lora serve``: base URL changed, nothing else."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from _service_helpers import REFUSED_WORD, policy_yaml
from openai.types import ModerationCreateResponse
from PIL import Image, ImageDraw

from safety_lora.service import BackgroundServer, ServiceSettings, create_app, hash_api_key
from safety_lora.service.openai_moderation import OPENAI_CATEGORIES
from safety_lora.testing import tiny_pipeline

KEY = "sk-test-key"


def data_url(colour: tuple[int, int, int]) -> str:
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((8, 8, 24, 24), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


RED, BLUE = data_url((215, 35, 35)), data_url((40, 70, 220))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("openai")
    policy = folder / "policy.yaml"
    policy.write_text(
        "classifiers: [{kind: concept_world, unsafe: {sexual: [red]}}]\n"
        "categories: {sexual: {threshold: 0.5, action: block}}\n"
        "prompt:\n"
        f"  classifiers: [{{kind: prompt_rules, extra_terms: {{violence: [{REFUSED_WORD}]}}}}]\n"
        "  rules: {violence: {steer_at: 0.3, refuse_at: 0.8}}\n"
    )
    settings = ServiceSettings(policy=str(policy), api_keys=[hash_api_key(KEY)], max_steps=4)
    app = create_app(settings, pipeline=tiny_pipeline())
    with BackgroundServer(app) as running:
        yield running.url


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def check(response: ModerationCreateResponse) -> None:
    """Every result carries every OpenAI category, typed as the client's own models say."""
    assert isinstance(response, ModerationCreateResponse) and response.id.startswith("modr-")
    for result in response.results:
        dumped = result.model_dump(by_alias=True)
        for field in ("categories", "category_scores", "category_applied_input_types"):
            assert set(dumped[field]) == set(OPENAI_CATEGORIES)


def test_text_and_lists(server: str) -> None:
    with client(server) as api:
        one = api.moderations.create(input=f"a {REFUSED_WORD} in a field")
        many = api.moderations.create(input=["a cat on a sofa", "a bowl of fruit"])
    check(one)
    (result,) = one.results
    assert result.flagged and result.categories.violence
    assert result.category_scores.violence == 1.0
    assert result.category_applied_input_types.violence == ["text"]
    extra: dict[str, Any] = result.model_extra["safety_lora"]  # type: ignore[index]
    assert extra["parts"][0]["action"] == "refuse"
    assert "hate/threatening" in extra["unjudged"]  # reported, not a silent 0
    assert result.category_applied_input_types.hate_threatening == []
    check(many)
    assert [r.flagged for r in many.results] == [False, False]


def test_image_parts_and_mixed_parts(server: str) -> None:
    with client(server) as api:
        image = api.moderations.create(
            model="omni-moderation-latest",
            input=[{"type": "image_url", "image_url": {"url": RED}}],
        )
        mixed = api.moderations.create(
            input=[
                {"type": "text", "text": "a cat on a sofa"},
                {"type": "image_url", "image_url": {"url": BLUE}},
            ]
        )
    check(image)
    assert image.model == "omni-moderation-latest"
    (result,) = image.results
    assert result.flagged and result.categories.sexual
    assert result.category_applied_input_types.sexual == ["image"]
    assert result.category_applied_input_types.violence == []  # no image classifier judges it
    check(mixed)
    (both,) = mixed.results
    assert not both.flagged
    assert both.category_applied_input_types.sexual == ["text", "image"]
    assert [p["type"] for p in both.model_extra["safety_lora"]["parts"]] == ["text", "image"]  # type: ignore[index]


def test_remote_urls_are_refused_and_generation_refusals_are_openais(server: str) -> None:
    steps = {"num_inference_steps": 2}
    with client(server) as api:
        with pytest.raises(openai.BadRequestError) as remote:
            api.moderations.create(
                input=[{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
            )
        with pytest.raises(openai.BadRequestError) as refused:
            api.images.generate(prompt=f"a {REFUSED_WORD}", extra_body=steps)
        image = api.images.generate(prompt="a cat", extra_body=steps)
    assert remote.value.code == "invalid_image_url"
    assert "fetches nothing" in str(remote.value)
    assert refused.value.code == "content_policy_violation"
    assert image.data and image.data[0].b64_json


def test_a_wrong_key_is_an_authentication_error(server: str) -> None:
    with client(server, key="wrong") as api, pytest.raises(openai.AuthenticationError):
        api.moderations.create(input="a cat")


def test_the_middleware_refuses_with_openais_code(tmp_path: Path) -> None:
    from fastapi import FastAPI
    from fastapi.responses import Response

    from safety_lora.middleware import GuardedRoute, SafetyMiddleware
    from safety_lora.policies import Policy

    inner = FastAPI()

    @inner.post("/v1/images/generations")
    async def generate() -> Response:
        return Response(b"{}", media_type="application/json")

    policy = Policy.from_file(policy_yaml(tmp_path / "p.yaml", sexual=0.0))
    route = GuardedRoute("/v1/images/generations", images_field="data.*.b64_json")
    app = SafetyMiddleware(inner, guard=policy, routes=[route])
    with (
        BackgroundServer(app) as running,
        client(running.url, key="x") as api,
        pytest.raises(openai.BadRequestError) as info,
    ):
        api.images.generate(prompt=f"a {REFUSED_WORD}")
    assert info.value.code == "content_policy_violation"


@pytest.mark.parametrize(("sexual", "flagged"), [(0.6, True), (0.35, True), (0.25, False)])
def test_sexual_minors_is_flagged_exactly_when_the_hard_rule_fires(
    sexual: float, flagged: bool
) -> None:
    from safety_lora.guard import SafetyGuard
    from safety_lora.policies.schema import Policy
    from safety_lora.service.openai_moderation import moderate

    policy = Policy.from_dict(
        {
            "classifiers": [{"kind": "static", "scores": {"minors": 0.6, "sexual": sexual}}],
            "categories": {"sexual": {"threshold": 0.3, "action": "blur"}},
        }
    )
    image = Image.new("RGB", (16, 16))
    result = moderate(SafetyGuard(policy), [("image", image)], request_id="r")
    assert result["categories"]["sexual/minors"] is flagged
    assert result["safety_lora"]["parts"][0]["rule"] == (
        "hard:minors+sexual" if flagged else "allow"
    )
