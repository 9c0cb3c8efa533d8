"""Moderation routes: images (JSON or multipart), OpenAI's ``/v1/moderations``, prompts."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from safety_lora.image_codec import (
    ImageDecodeError,
    decode_b64_image,
    decode_image,
    encode_image,
)
from safety_lora.service.errors import ServiceError, describe_errors
from safety_lora.service.openai_moderation import (
    ImagePart,
    ModerationsRequest,
    TextPart,
)
from safety_lora.service.openai_moderation import moderate as openai_moderate
from safety_lora.service.schemas import (
    ImageModerationRequest,
    ModerationResponse,
    ModerationResult,
    PromptModerationRequest,
)
from safety_lora.service.settings import ServiceSettings
from safety_lora.service.state import StateDep

__all__ = ["router"]

#: Prompts (or strings) one moderation request may hold.
MAX_PROMPTS = 64

router = APIRouter()

#: The image route reads its body itself (JSON or multipart): this documents both.
_IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ImageModerationRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                        },
                        "prompt": {"type": "string"},
                        "return_images": {"type": "boolean"},
                    },
                    "required": ["file"],
                }
            },
        },
        "required": True,
    }
}


@router.post("/v1/moderations/image", response_model=ModerationResponse, openapi_extra=_IMAGE_BODY)
async def moderate_image(request: Request, service: StateDep) -> ModerationResponse:
    """Judge images (base64 JSON or multipart ``file`` uploads) against the policy."""
    request_id = request.state.request_id
    guard = service.guard
    images, prompt, return_images = await _read_images(request, service.settings)
    result = await run_in_threadpool(guard.moderate, images, prompt=prompt, request_id=request_id)
    service.count("image", [d.action.value for d in result.decisions])
    results = [
        ModerationResult(
            flagged=d.flagged,
            action=d.action.value,
            category_scores={c.value: s for c, s in d.scores.items()},
            decision=d.to_dict(),
            b64_json=base64.b64encode(encode_image(im)).decode("ascii") if return_images else None,
        )
        for im, d in zip(result.images, result.decisions, strict=True)
    ]
    return ModerationResponse(id=request_id, policy=guard.policy.name, results=results)


@router.post("/v1/moderations")
async def moderations(
    body: ModerationsRequest, request: Request, service: StateDep
) -> dict[str, Any]:
    """OpenAI's moderation endpoint: text, lists and image parts, OpenAI's categories."""
    request_id = request.state.request_id
    guard = service.guard
    groups = _moderation_inputs(body, service.settings)

    def judge() -> list[dict[str, Any]]:
        return [openai_moderate(guard, parts, request_id=request_id) for parts in groups]

    results = await run_in_threadpool(judge)
    service.count("moderation", [r["safety_lora"]["action"] for r in results])
    return {
        "id": f"modr-{request_id}",
        "model": body.model or f"safety-lora/{guard.policy.name}",
        "results": results,
    }


@router.post("/v1/moderations/prompt", response_model=ModerationResponse)
async def moderate_prompt(
    body: PromptModerationRequest, request: Request, service: StateDep
) -> ModerationResponse:
    """Check prompts (allow / steer / refuse) against the policy."""
    request_id = request.state.request_id
    guard = service.guard
    prompts = [body.input] if isinstance(body.input, str) else body.input
    if not 1 <= len(prompts) <= MAX_PROMPTS:
        raise ServiceError(
            400, "invalid_request_error", f"give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}"
        )

    def check() -> list[Any]:
        return [guard.check_prompt(p, request_id=request_id) for p in prompts]

    decisions = await run_in_threadpool(check)
    service.count("prompt", [pd.action.value for pd in decisions])
    results = [
        ModerationResult(
            flagged=pd.refused,
            action=pd.action.value,
            category_scores={c.value: s for c, s in pd.risk.items()},
            decision=pd.to_dict(),
        )
        for pd in decisions
    ]
    return ModerationResponse(id=request_id, policy=guard.policy.name, results=results)


async def _read_images(
    request: Request, settings: ServiceSettings
) -> tuple[list[Image.Image], str | None, bool]:
    """Decode the request's images (JSON base64 or multipart), each checked against limits."""
    content_type = request.headers.get("content-type", "")
    limit = settings.max_image_pixels
    try:
        if content_type.startswith("multipart/form-data"):
            async with request.form(max_files=settings.max_images, max_fields=8) as form:
                uploads = [f for f in form.getlist("file") if not isinstance(f, str)]
                blobs = [await f.read() for f in uploads]
                prompt = form.get("prompt")
                flag = str(form.get("return_images", "")).lower() in ("1", "true", "yes")
            if not blobs:
                raise ServiceError(400, "invalid_request_error", "multipart needs 'file' parts")
            images = [decode_image(b, max_pixels=limit).image for b in blobs]
            return images, prompt if isinstance(prompt, str) else None, flag
        try:
            body = ImageModerationRequest.model_validate_json(await request.body())
        except ValidationError as e:
            raise ServiceError(400, "invalid_request_error", describe_errors(e.errors())) from e
        inputs = [body.input] if isinstance(body.input, str) else body.input
        if not 1 <= len(inputs) <= settings.max_images:
            raise ServiceError(
                400,
                "invalid_request_error",
                f"give 1 to {settings.max_images} images, got {len(inputs)}",
            )
        images = []
        for i, text in enumerate(inputs):
            try:
                images.append(decode_b64_image(text, max_pixels=limit).image)
            except ImageDecodeError as e:
                raise ImageDecodeError(f"input[{i}]: {e}") from e
        return images, body.prompt, body.return_images
    except ImageDecodeError as e:
        raise ServiceError(400, "invalid_image", str(e)) from e


def _moderation_inputs(
    body: ModerationsRequest, settings: ServiceSettings
) -> list[list[tuple[str, Any]]]:
    """One list of (type, value) parts per result; images decoded from data URLs only."""
    if isinstance(body.input, str):
        return [[("text", body.input)]]
    if not body.input:
        raise ServiceError(400, "invalid_request_error", "input: give at least one item")
    if all(isinstance(item, str) for item in body.input):
        if len(body.input) > MAX_PROMPTS:
            raise ServiceError(
                400, "invalid_request_error", f"input: at most {MAX_PROMPTS} strings"
            )
        return [[("text", item)] for item in body.input]  # type: ignore[misc]
    parts: list[tuple[str, Any]] = []
    images = 0
    for i, part in enumerate(body.input):
        if isinstance(part, TextPart):
            parts.append(("text", part.text))
            continue
        assert isinstance(part, ImagePart)
        url = part.image_url.url
        if not url.startswith("data:"):
            raise ServiceError(
                400,
                "invalid_image_url",
                f"input[{i}].image_url.url: only data: URLs are accepted "
                f"(data:image/png;base64,...); the service fetches nothing",
            )
        images += 1
        if images > settings.max_images:
            raise ServiceError(
                400, "invalid_request_error", f"input: at most {settings.max_images} images"
            )
        try:
            parts.append(
                ("image", decode_b64_image(url, max_pixels=settings.max_image_pixels).image)
            )
        except ImageDecodeError as e:
            raise ServiceError(400, "invalid_image", f"input[{i}].image_url.url: {e}") from e
    return [parts]
