"""``POST /v1/images/edits``: OpenAI's image edit API under the policy (multipart upload).

``image`` (one or more files; the official client sends a list as ``image[]``), an optional
``mask``, ``prompt``, ``n``, ``size``, ``response_format`` (``b64_json``), plus the
extensions ``strength`` (how far from the input to go, (0, 1], default 0.8), ``seed`` and
``num_inference_steps``. Each image is made ``n`` edits of (image-major in ``data``). With a
mask the first image is inpainted where the mask is fully transparent (a mask without alpha
is read diffusers' way: white is repainted), as OpenAI applies a mask to the first image;
the others go image-to-image. Inputs are decoded within ``max_image_pixels`` and brought to
the output size (``size``, else the model's native size) before the pipeline and the
policy see them. The pipeline judges each input under the policy's ``inputs`` section: an
input it refuses is answered as a refused prompt is (400 ``content_policy_violation``, the
decision naming the input, ``param`` the upload).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from safety_lora.decisions import Decision
from safety_lora.guard import PromptRefused
from safety_lora.image_codec import ImageDecodeError, decode_image
from safety_lora.imaging import pages, to_rgb
from safety_lora.service.errors import ServiceError, describe_errors
from safety_lora.service.generator import GenerationCall, Limits
from safety_lora.service.routes.generation import check_limits, generate_and_respond
from safety_lora.service.schemas import (
    GenerationRequest,
    GenerationResponse,
)
from safety_lora.service.settings import ServiceSettings
from safety_lora.service.state import ServiceState, StateDep
from safety_lora.service.text_limits import BoundedText

__all__ = ["EditForm", "request_schema", "router"]

router = APIRouter()

#: The form fields that carry files.
_FILES = ("image", "image[]", "mask")


class EditForm(BaseModel):
    """The text fields of an image edit request (OpenAI's, plus ``strength``, ``seed`` and
    ``num_inference_steps``); unknown fields are refused, not ignored."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"prompt": "a blue circle", "n": 2, "strength": 0.6}]},
    )

    prompt: BoundedText = Field(
        min_length=1, description="at most the server's max_text_chars characters"
    )
    n: int = Field(default=1, ge=1, description="edits per image")
    size: str | None = Field(
        default=None,
        pattern=r"^([0-9]{1,5}x[0-9]{1,5}|auto)$",
        description="WxH of the output; auto or absent: the model's native size",
    )
    response_format: Literal["b64_json"] = "b64_json"
    strength: float = Field(
        default=0.8, gt=0.0, le=1.0, description="how far from the input to go (1: all)"
    )
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    num_inference_steps: int | None = Field(default=None, ge=1, le=10_000)
    stream: bool = Field(default=False, description="accepted when false")
    model: str | None = Field(
        default=None, max_length=256, description="accepted; the service has one model"
    )
    quality: str | None = Field(default=None, max_length=256, description="accepted and ignored")
    user: str | None = Field(default=None, max_length=256, description="accepted and ignored")


def request_schema() -> dict[str, Any]:
    """The multipart body as OpenAPI describes it (``ImageEditRequest``): the files, then
    :class:`EditForm`'s fields."""
    schema = EditForm.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    files = {
        "image": {
            "description": "the image(s) to edit; a list may also be sent as image[]",
            "oneOf": [binary, {"type": "array", "items": binary}],
        },
        "mask": {**binary, "description": "repaint where fully transparent (first image)"},
    }
    schema["title"] = "ImageEditRequest"
    schema["description"] = (
        "OpenAI's image edit request, multipart/form-data: image file(s), an optional mask, "
        "and text fields; strength, seed and num_inference_steps are extensions."
    )
    schema["properties"] = {**files, **schema["properties"]}
    schema["required"] = ["image", *schema.get("required", [])]
    return schema


#: The route reads its multipart body itself: this documents it (``app`` adds the schema).
_BODY: dict[str, Any] = {
    "requestBody": {
        "content": {
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/ImageEditRequest"}}
        },
        "required": True,
    }
}


@router.post("/v1/images/edits", response_model=GenerationResponse, openapi_extra=_BODY)
async def edit(request: Request, service: StateDep) -> GenerationResponse:
    """Edit uploaded images under the policy (OpenAI's image edit API, multipart)."""
    request_id = request.state.request_id
    form, uploads, mask = await _read_form(request, service.settings)
    limits = _limits(service)
    as_generation = GenerationRequest(  # the limits generation has: text, n, steps, size
        prompt=form.prompt,
        n=form.n,
        size=None if form.size == "auto" else form.size,
        seed=form.seed,
        num_inference_steps=form.num_inference_steps,
    )
    size = check_limits(as_generation, service) or service.native
    _check_edit(form, len(uploads), limits, service.settings)
    images, mask_image = await asyncio.to_thread(
        _prepare, uploads, mask, size, service.settings.max_image_pixels
    )
    pd = await run_in_threadpool(service.guard.check_prompt, form.prompt, request_id=request_id)
    service.count("prompt", [pd.action.value])
    if pd.refused:
        raise ServiceError(
            400, "content_policy_violation", str(PromptRefused(pd)), decision=pd.to_dict()
        )
    call = GenerationCall(
        n=form.n,
        size=size,
        steps=form.num_inference_steps,
        seed=form.seed,
        images=tuple(images),
        mask=mask_image,
        strength=form.strength,
    )
    return await generate_and_respond(
        request,
        service,
        lambda job: service.run(form.prompt, call, pd, request_id, job),
        prompt=form.prompt,
        pd=pd,
        request_id=request_id,
        refuse=lambda decisions: _refuse_input(
            decisions, form.n, [field for field, _ in uploads], service
        ),
    )


def _limits(service: ServiceState) -> Limits:
    """The loaded model's limits, refusing the request when it cannot edit images."""
    limits = service.limits
    if limits is None:
        raise ServiceError(503, "model_not_loaded", "the model is not loaded yet")
    if limits.edits_unavailable:
        raise ServiceError(
            400, "edits_unavailable", f"this server cannot edit images: {limits.edits_unavailable}"
        )
    return limits


def _check_edit(form: EditForm, images: int, limits: Limits, settings: ServiceSettings) -> None:
    """What generation's limits do not cover: images x edits, steps left after ``strength``."""
    if form.stream:
        raise ServiceError(400, "invalid_request_error", "stream: streaming is not supported")
    if images * form.n > settings.max_images:
        raise ServiceError(
            400,
            "invalid_request_error",
            f"{images} image(s) x n={form.n} is {images * form.n} images, over this server's "
            f"limit of {settings.max_images} (max_images)",
        )
    steps = form.num_inference_steps or limits.default_steps
    if int(steps * form.strength) < 1:
        raise ServiceError(
            400,
            "invalid_request_error",
            f"strength={form.strength} of num_inference_steps={steps} runs no denoising step "
            f"(int(steps x strength) must be at least 1)",
            param="strength",
        )


async def _read_form(
    request: Request, settings: ServiceSettings
) -> tuple[EditForm, list[tuple[str, bytes]], tuple[str, bytes] | None]:
    """The form's fields, its images as ``(field, bytes)`` and its mask; 400 naming the field
    for anything else (not multipart, a text where a file goes, an unknown or repeated field)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise ServiceError(
            400,
            "invalid_request_error",
            f"/v1/images/edits takes multipart/form-data (image, mask, prompt...), got "
            f"{media or 'no content type'!r}",
        )
    try:
        async with request.form(max_files=settings.max_images + 1, max_fields=32) as form:
            fields: dict[str, str] = {}
            files: list[tuple[str, bytes]] = []
            for key in form:
                values = form.getlist(key)
                if key in _FILES:
                    for value in values:
                        if not isinstance(value, UploadFile):
                            raise ServiceError(
                                400, "invalid_request_error", f"{key}: give a file upload",
                                param=key,
                            )  # fmt: skip
                        files.append((key, await value.read()))
                elif len(values) > 1:
                    raise ServiceError(
                        400, "invalid_request_error", f"{key}: given {len(values)} times", param=key
                    )
                elif isinstance(values[0], str):
                    fields[key] = values[0]
                else:
                    raise ServiceError(
                        400, "invalid_request_error", f"{key}: a file where a value goes", param=key
                    )
    except HTTPException as e:  # starlette's multipart limits and parse errors
        raise ServiceError(
            400,
            "invalid_request_error",
            f"multipart body: {e.detail} (files: at most max_images={settings.max_images} "
            f"images and a mask)",
        ) from e
    try:
        parsed = EditForm.model_validate(fields)
    except ValidationError as e:
        raise ServiceError(400, "invalid_request_error", describe_errors(e.errors())) from e
    images = [data for key, data in files if key != "mask"]
    masks = [data for key, data in files if key == "mask"]
    if not images:
        raise ServiceError(400, "invalid_request_error", "image: give an image", param="image")
    if len(masks) > 1:
        raise ServiceError(
            400, "invalid_request_error", f"mask: given {len(masks)} times", param="mask"
        )
    names = ["image"] if len(images) == 1 else [f"image[{i}]" for i in range(len(images))]
    return (
        parsed,
        list(zip(names, images, strict=True)),
        ("mask", masks[0]) if masks else None,
    )


def _prepare(
    uploads: list[tuple[str, bytes]],
    mask: tuple[str, bytes] | None,
    size: tuple[int, int],
    max_pixels: int,
) -> tuple[list[Image.Image], Image.Image | None]:
    """Decode the uploads (400 naming the field when one cannot be) and bring them to ``size``:
    the images RGB, as displayed; the mask ``L``, white where to repaint."""
    decoded = [_decode(field, data, max_pixels) for field, data in uploads]
    images = [_sized(to_rgb(image)[0], size, Image.Resampling.LANCZOS) for image in decoded]
    if mask is None:
        return images, None
    field, data = mask
    shape = _decode(field, data, max_pixels)
    if shape.size != decoded[0].size:
        raise ServiceError(
            400,
            "invalid_image",
            f"mask: {shape.size[0]}x{shape.size[1]}, but {uploads[0][0]} is "
            f"{decoded[0].size[0]}x{decoded[0].size[1]}: a mask has its image's size",
            param="mask",
        )
    return images, _sized(_repaint(shape), size, Image.Resampling.NEAREST)


def _decode(field: str, data: bytes, max_pixels: int) -> Image.Image:
    """One upload decoded within the pixel budget, a still image, or a 400 naming ``field``."""
    try:
        image = decode_image(data, max_pixels=max_pixels).image
        frames = len(pages(image))
    except ImageDecodeError as e:
        raise ServiceError(400, "invalid_image", f"{field}: {e}", param=field) from e
    if frames > 1:
        raise ServiceError(
            400,
            "invalid_image",
            f"{field}: holds {frames} images (frames, pages or layers); an edit takes one still",
            param=field,
        )
    return image


def _repaint(mask: Image.Image) -> Image.Image:
    """OpenAI's mask as diffusers takes it: white where fully transparent; a mask without
    alpha is already diffusers' (white repaints, from mid-grey up)."""
    if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
        alpha = mask.convert("RGBA").getchannel("A")
        return alpha.point(lambda a: 255 if a == 0 else 0)
    return to_rgb(mask)[0].convert("L").point(lambda v: 255 if v >= 128 else 0)


def _sized(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)


def _refuse_input(
    decisions: list[Decision], n: int, fields: list[str], service: ServiceState
) -> None:
    """Answer as a refused prompt is when the policy refused an input (the generator stopped
    there: its ``n`` refusals end ``decisions``, one edit call per image)."""
    refused = next((d for d in decisions if d.input_name), None)
    if refused is None:
        return
    service.count("input", [refused.action.value])
    upload = decisions.index(refused) // n
    field = "mask" if refused.input_name == "mask_image" else fields[upload]
    reasons = "; ".join(refused.reasons) or refused.rule
    raise ServiceError(
        400,
        "content_policy_violation",
        f"{field} refused by the safety policy ({refused.rule}): {reasons}",
        decision=refused.to_dict(),
        param=field,
    )
