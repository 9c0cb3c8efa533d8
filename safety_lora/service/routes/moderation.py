"""Moderation routes: images (JSON or multipart), OpenAI's ``/v1/moderations``, prompts."""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from safety_lora.decisions import Decision
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
from safety_lora.service.text_limits import check_count, check_texts

__all__ = ["router"]

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
    inputs, prompt, return_images = await _read_images(request, service.settings)
    if prompt is not None:
        check_texts([("prompt", prompt)], service.settings.max_text_chars)

    def work() -> tuple[list[Decision], list[str | None]]:
        """Decode, judge and re-encode in a worker thread: the event loop stays free."""
        images = _decode_images(inputs, service.settings.max_image_pixels)
        result = guard.moderate(images, prompt=prompt, request_id=request_id)
        encoded = [
            base64.b64encode(encode_image(im)).decode("ascii") if return_images else None
            for im in result.images
        ]
        return result.decisions, encoded

    decisions, encoded = await run_in_threadpool(work)
    service.count("image", [d.action.value for d in decisions])
    results = [
        ModerationResult(
            flagged=d.flagged,
            action=d.action.value,
            category_scores={c.value: s for c, s in d.scores.items()},
            decision=d.to_dict(),
            b64_json=b64,
        )
        for d, b64 in zip(decisions, encoded, strict=True)
    ]
    return ModerationResponse(id=request_id, policy=guard.policy.name, results=results)


@router.post("/v1/moderations")
async def moderations(
    body: ModerationsRequest, request: Request, service: StateDep
) -> dict[str, Any]:
    """OpenAI's moderation endpoint: text, lists and image parts, OpenAI's categories."""
    request_id = request.state.request_id
    guard = service.guard
    _check_text_limits(body, service.settings)
    groups = _moderation_inputs(body, service.settings)

    def judge() -> list[dict[str, Any]]:
        """Decode every image part, then judge, in a worker thread: the event loop stays free."""
        limit = service.settings.max_image_pixels
        decoded = [_decode_parts(parts, limit) for parts in groups]
        return [openai_moderate(guard, parts, request_id=request_id) for parts in decoded]

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
    settings = service.settings
    if isinstance(body.input, str):
        prompts, fields = [body.input], ["input"]
    else:
        prompts, fields = body.input, [f"input[{i}]" for i in range(len(body.input))]
    if not prompts:
        raise ServiceError(400, "invalid_request_error", "input: give at least one prompt")
    check_count("input", len(prompts), settings.max_texts, "max_texts", "prompts")
    check_texts(list(zip(fields, prompts, strict=True)), settings.max_text_chars)

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
) -> tuple[list[tuple[str, bytes | str]], str | None, bool]:
    """The request's images, not decoded yet (JSON base64 or multipart uploads), each with
    the field that brought it; the prompt and ``return_images``."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=settings.max_images, max_fields=8) as form:
            uploads = [f for f in form.getlist("file") if not isinstance(f, str)]
            blobs: list[tuple[str, bytes | str]] = [
                (f"file[{i}] {f.filename or ''}".rstrip(), await f.read())
                for i, f in enumerate(uploads)
            ]
            prompt = form.get("prompt")
            flag = str(form.get("return_images", "")).lower() in ("1", "true", "yes")
        if not blobs:
            raise ServiceError(400, "invalid_request_error", "multipart needs 'file' parts")
        return blobs, prompt if isinstance(prompt, str) else None, flag
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
    return [(f"input[{i}]", text) for i, text in enumerate(inputs)], body.prompt, body.return_images


def _decode_images(inputs: list[tuple[str, bytes | str]], max_pixels: int) -> list[Image.Image]:
    """Decode each (field, bytes or base64) within ``max_pixels`` over all of a file's images
    (run in a worker thread); a bad one is a 400 naming its field."""
    images = []
    for where, data in inputs:
        try:
            if isinstance(data, bytes):
                images.append(decode_image(data, max_pixels=max_pixels).image)
            else:
                images.append(decode_b64_image(data, max_pixels=max_pixels).image)
        except ImageDecodeError as e:
            raise ServiceError(400, "invalid_image", f"{where}: {e}") from e
    return images


def _check_text_limits(body: ModerationsRequest, settings: ServiceSettings) -> None:
    """Refuse a request over this server's text limits (400), before any image is decoded or
    any text judged: characters per text, strings per list, content parts per request."""
    if isinstance(body.input, str):
        check_texts([("input", body.input)], settings.max_text_chars)
    elif all(isinstance(item, str) for item in body.input):
        check_count("input", len(body.input), settings.max_texts, "max_texts", "texts")
        texts = [(f"input[{i}]", t) for i, t in enumerate(body.input) if isinstance(t, str)]
        check_texts(texts, settings.max_text_chars)
    else:
        check_count("input", len(body.input), settings.max_parts, "max_parts", "content parts")
        parts = body.input
        texts = [
            (f"input[{i}].text", p.text) for i, p in enumerate(parts) if isinstance(p, TextPart)
        ]
        check_texts(texts, settings.max_text_chars)


def _moderation_inputs(
    body: ModerationsRequest, settings: ServiceSettings
) -> list[list[tuple[str, Any]]]:
    """One list of (type, value) parts per result; an image part is its (field, data URL),
    decoded later by :func:`_decode_parts` (data URLs only: nothing is fetched)."""
    if isinstance(body.input, str):
        return [[("text", body.input)]]
    if not body.input:
        raise ServiceError(400, "invalid_request_error", "input: give at least one item")
    if all(isinstance(item, str) for item in body.input):
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
        parts.append(("image", (f"input[{i}].image_url.url", url)))  # decoded by _decode_parts
    return [parts]


def _decode_parts(parts: list[tuple[str, Any]], max_pixels: int) -> list[tuple[str, Any]]:
    """``parts`` with each image's (field, data URL) decoded (run in a worker thread); a bad
    one is a 400 naming its field."""
    decoded: list[tuple[str, Any]] = []
    for kind, value in parts:
        if kind == "image":
            where, url = value
            try:
                value = decode_b64_image(url, max_pixels=max_pixels).image
            except ImageDecodeError as e:
                raise ServiceError(400, "invalid_image", f"{where}: {e}") from e
        decoded.append((kind, value))
    return decoded
