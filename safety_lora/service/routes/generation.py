"""``POST /v1/images/generations``: OpenAI-shaped generation under the policy."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from safety_lora.decisions import Decision, PromptDecision
from safety_lora.guard import PromptRefused
from safety_lora.provenance import generator_name, mark_images
from safety_lora.service.cancel import Cancellation, Cancelled
from safety_lora.service.errors import ServiceError
from safety_lora.service.generator import Generated
from safety_lora.service.schemas import (
    GeneratedImage,
    GenerationRequest,
    GenerationResponse,
    Safety,
)
from safety_lora.service.state import ServiceState, StateDep
from safety_lora.service.text_limits import check_texts

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/images/generations", response_model=GenerationResponse)
async def generate(
    body: GenerationRequest, request: Request, service: StateDep
) -> GenerationResponse:
    """Generate images under the policy (OpenAI images API shape)."""
    request_id = request.state.request_id
    size = check_limits(body, service)
    pd = await run_in_threadpool(service.guard.check_prompt, body.prompt, request_id=request_id)
    service.count("prompt", [pd.action.value])
    if pd.refused:
        raise ServiceError(
            400,
            "content_policy_violation",
            str(PromptRefused(pd)),
            decision=pd.to_dict(),
        )
    return await generate_and_respond(
        request,
        service,
        lambda job: service.generate(body, size, pd, request_id, job),
        prompt=body.prompt,
        pd=pd,
        request_id=request_id,
    )


async def generate_and_respond(
    request: Request,
    service: ServiceState,
    work: Callable[[Cancellation], Generated],
    *,
    prompt: str,
    pd: PromptDecision,
    request_id: str,
    refuse: Callable[[list[Decision]], None] | None = None,
) -> GenerationResponse:
    """Run ``work`` in a worker thread (cancelled when the client leaves or past the
    deadline), then answer with its images, each carrying its provenance, and every
    decision; ``refuse`` may turn the decisions into an error first (a refused input)."""
    job = Cancellation(service.settings.request_timeout_s)
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    try:
        out = await run_in_threadpool(work, job)
    except Cancelled as e:
        status = 503 if e.reason in ("shutdown", "reload") else 504
        raise ServiceError(status, f"generation_{e.reason}", str(e)) from e
    finally:
        watcher.cancel()
    decisions: list[Decision] = list(out.decisions)
    if refuse is not None:
        refuse(decisions)
    service.count("image", [d.action.value for d in decisions])
    marked = await run_in_threadpool(  # each image with its provenance (C2PA or unsigned)
        mark_images,
        out.images,
        decisions,
        generator=generator_name(service.settings.model),
        settings=service.settings.provenance,
        prompt=prompt,
    )
    data = [GeneratedImage(b64_json=base64.b64encode(b).decode("ascii")) for b in marked]
    return GenerationResponse(
        created=int(time.time()),
        data=data,
        safety=Safety(
            request_id=request_id,
            prompt=pd.to_dict(),
            decisions=[d.to_dict() for d in decisions],
        ),
    )


def check_limits(body: GenerationRequest, service: ServiceState) -> tuple[int, int] | None:
    """Refuse work while draining and requests over this server's limits; the parsed size."""
    if service.draining:
        raise ServiceError(503, "server_shutting_down", "the server is shutting down")
    check_texts([("prompt", body.prompt)], service.settings.max_text_chars)
    max_images = service.settings.max_images
    if body.n > max_images:
        raise ServiceError(
            400,
            "invalid_request_error",
            f"n={body.n} is over this server's limit of {max_images} (max_images)",
        )
    steps = body.num_inference_steps
    if steps is not None and steps > service.max_steps:
        raise ServiceError(
            400,
            "invalid_request_error",
            f"num_inference_steps={steps} is over this server's limit of "
            f"{service.max_steps} (max_steps, at most half the model's schedule)",
        )
    return _parse_size(body.size, service.max_pixels, service.native)


async def cancel_on_disconnect(request: Request, job: Cancellation) -> None:
    """Cancel ``job`` when the client goes away (polled: the generation runs in a thread)."""
    while True:
        if await request.is_disconnected():
            job.cancel("disconnected", "the client disconnected")
            return
        await asyncio.sleep(0.05)


def _parse_size(
    size: str | None, max_pixels: int, native: tuple[int, int]
) -> tuple[int, int] | None:
    """``size`` ("WxH") as (width, height): sides multiples of 8, at most ``max_pixels``."""
    if size is None:
        return None
    width, height = (int(v) for v in size.split("x"))
    if width % 8 or height % 8 or not (8 <= width <= 4096 and 8 <= height <= 4096):
        raise ServiceError(
            400, "invalid_request_error", f"size {size!r}: sides must be multiples of 8, 8..4096"
        )
    if width * height > max_pixels:
        raise ServiceError(
            400,
            "invalid_request_error",
            f"size {size!r} is {width * height} pixels, over this model's limit of {max_pixels} "
            f"(its native size is {native[0]}x{native[1]}; max_generation_pixels raises it)",
        )
    return width, height
