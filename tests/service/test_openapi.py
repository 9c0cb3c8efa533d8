"""The OpenAPI document is whole: every reference resolves, and every example is a request
the service's own models accept."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from safety_lora.service.app import create_app
from safety_lora.service.openai_moderation import ModerationsRequest
from safety_lora.service.schemas import (
    GenerationRequest,
    ImageModerationRequest,
    PromptModerationRequest,
)
from safety_lora.service.settings import ServiceSettings


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(ServiceSettings(policy="permissive")).openapi()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    refs = _refs(document)
    assert "#/components/schemas/ImageModerationRequest" in refs
    missing = sorted({r for r in refs if r.rsplit("/", 1)[-1] not in schemas})
    assert not missing


@pytest.mark.parametrize(
    "model",
    [GenerationRequest, ImageModerationRequest, PromptModerationRequest, ModerationsRequest],
)
def test_every_example_is_a_valid_request(model: type[BaseModel], document: dict[str, Any]) -> None:
    examples = document["components"]["schemas"][model.__name__]["examples"]
    assert examples
    for example in examples:
        model.model_validate(example)
