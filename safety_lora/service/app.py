"""``create_app``: the FastAPI service (OpenAI-shaped generation, moderation, policy, health)."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from safety_lora.asgi import error_envelope
from safety_lora.decisions import Decision, PromptDecision
from safety_lora.guard import PromptRefused, SafetyGuard
from safety_lora.image_codec import (
    ImageDecodeError,
    decode_b64_image,
    decode_image,
    encode_image,
)
from safety_lora.policies.engine import PolicyEngine
from safety_lora.service.cancel import Cancellation, Cancelled
from safety_lora.service.gate import Admission, Gate
from safety_lora.service.generator import (
    Generated,
    GenerationCall,
    Generator,
    Limits,
    LocalGenerator,
)
from safety_lora.service.metrics import ServiceMetrics
from safety_lora.service.openai_moderation import (
    ImagePart,
    ModerationsRequest,
    TextPart,
)
from safety_lora.service.openai_moderation import moderate as openai_moderate
from safety_lora.service.settings import ServiceSettings

__all__ = ["ServiceError", "create_app"]

logger = logging.getLogger("safety_lora.service")

MAX_PROMPTS = 64


class ServiceError(Exception):
    """An error answered as ``{"error": {"message", "type", "code", ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.extra = status, code, extra


# -- request and response bodies (also the OpenAPI schema) -------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationRequest(_Body):
    """OpenAI images API request; ``seed`` and ``num_inference_steps`` are extensions."""

    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(default=1, ge=1)
    size: str | None = Field(default=None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$")
    response_format: Literal["b64_json"] = "b64_json"
    model: str | None = Field(default=None, description="accepted; the service has one model")
    quality: str | None = Field(default=None, description="accepted and ignored")
    style: str | None = Field(default=None, description="accepted and ignored")
    user: str | None = Field(default=None, description="accepted and ignored")
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    num_inference_steps: int | None = Field(default=None, ge=1, le=10_000)


class GeneratedImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class Safety(BaseModel):
    request_id: str
    prompt: dict[str, Any] | None = None
    decisions: list[dict[str, Any]]


class GenerationResponse(BaseModel):
    created: int
    data: list[GeneratedImage]
    safety: Safety


class ImageModerationRequest(_Body):
    """Base64 images (or ``data:`` URLs); multipart uploads use ``file`` parts instead."""

    input: str | list[str]
    prompt: str | None = None
    return_images: bool = Field(default=False, description="include policy-applied images")


class PromptModerationRequest(_Body):
    input: str | list[str]


class ModerationResult(BaseModel):
    flagged: bool
    action: str
    category_scores: dict[str, float]
    decision: dict[str, Any]
    b64_json: str | None = None


class ModerationResponse(BaseModel):
    id: str
    policy: str
    results: list[ModerationResult]


# -- shared state -----------------------------------------------------------------------------


class _Service:
    """What every request shares: the guard, the generator, admission, metrics, drain state."""

    def __init__(
        self,
        settings: ServiceSettings,
        pipeline: Any | None,
        *,
        engine: PolicyEngine | None = None,
        generator: Generator | None = None,
    ) -> None:
        if engine is None:
            engine = PolicyEngine(settings.load_policy())
        self.settings = settings
        self.guard = SafetyGuard(engine.policy, engine=engine)
        self.generator = generator or LocalGenerator(settings, engine, pipeline)
        self.metrics = ServiceMetrics()
        self.admission = Admission(settings.max_concurrency, settings.queue_size)
        self.limits: Limits | None = None  # once the model is loaded
        self.draining = False
        self._jobs: set[Cancellation] = set()
        self._jobs_lock = threading.Lock()

    def load(self) -> None:
        """Load the model once (at startup)."""
        self.limits = self.generator.load()

    @property
    def native(self) -> tuple[int, int]:
        return self.limits.native if self.limits is not None else (0, 0)

    @property
    def max_steps(self) -> int:
        return self.limits.max_steps if self.limits is not None else self.settings.max_steps

    @property
    def max_pixels(self) -> int:
        """Pixels per generated image: the setting, else the model's native size."""
        return self.settings.max_generation_pixels or self.native[0] * self.native[1]

    def begin_drain(self) -> None:
        """Shutdown began: refuse new work; in-flight jobs get the grace time, then stop."""
        self.draining = True
        grace = max(0.0, self.settings.shutdown_timeout_s - 2.0)
        with self._jobs_lock:
            for job in self._jobs:
                job.shorten(grace, "shutdown", "the server is shutting down")

    def close(self) -> None:
        self.generator.close()

    def generate(
        self,
        body: GenerationRequest,
        size: tuple[int, int] | None,
        pd: PromptDecision,
        request_id: str,
        job: Cancellation,
    ) -> Generated:
        """One generation of an admitted prompt (``pd``: its decision, made once), stopped at
        its next step once ``job`` is cancelled or late."""
        call = GenerationCall(n=body.n, size=size, steps=body.num_inference_steps, seed=body.seed)
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            return self.generator.generate(body.prompt, call, pd, request_id, job)
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)

    def count(self, kind: str, actions: Sequence[str]) -> None:
        for action in actions:
            self.metrics.decisions.labels(kind=kind, action=action).inc()


# -- the app ----------------------------------------------------------------------------------


def create_app(
    settings: ServiceSettings,
    *,
    pipeline: Any | None = None,
    engine: PolicyEngine | None = None,
    generator: Generator | None = None,
) -> FastAPI:
    """The service for ``settings``; ``pipeline`` serves a ready diffusers pipeline instead of
    loading ``settings.model`` (embedding, tests). The model loads once, at startup.

    ``engine`` and ``generator`` replace the policy engine and the in-process model (the Ray
    Serve ingress: remote classifiers, a generator deployment); routes, auth, limits and
    metrics stay the same.
    """
    service = _Service(settings, pipeline, engine=engine, generator=generator)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            logger.warning(
                "no API keys configured: the service is open to anyone on this machine and "
                "serves on the loopback address %s only",
                settings.host,
            )
        if settings.generation:
            await run_in_threadpool(service.load)
        logger.info("policy %r ready", service.guard.policy.name)
        yield
        service.close()

    app = FastAPI(
        title="safety-lora",
        summary="Content-safety layer for diffusion pipelines: generation and moderation.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, e: ServiceError) -> JSONResponse:
        return JSONResponse(error_envelope(e.code, str(e), **e.extra), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        message = "; ".join(_describe(err) for err in e.errors())
        body = error_envelope("invalid_request", message, type="invalid_request_error")
        return JSONResponse(body, status_code=400)

    _routes(app, service)
    app.add_middleware(
        Gate, settings=settings, metrics=service.metrics, admission=service.admission
    )
    return app


def _routes(app: FastAPI, service: _Service) -> None:
    settings = service.settings
    guard = service.guard

    if settings.generation:

        @app.post("/v1/images/generations", response_model=GenerationResponse)
        async def generate(body: GenerationRequest, request: Request) -> GenerationResponse:
            """Generate images under the policy (OpenAI images API shape)."""
            request_id = request.state.request_id
            if service.draining:
                raise ServiceError(503, "server_shutting_down", "the server is shutting down")
            if body.n > settings.max_images:
                raise ServiceError(
                    400,
                    "invalid_request_error",
                    f"n={body.n} is over this server's limit of {settings.max_images} (max_images)",
                )
            steps = body.num_inference_steps
            if steps is not None and steps > service.max_steps:
                raise ServiceError(
                    400,
                    "invalid_request_error",
                    f"num_inference_steps={steps} is over this server's limit of "
                    f"{service.max_steps} (max_steps, at most half the model's schedule)",
                )
            size = _parse_size(body.size, service.max_pixels, service.native)
            pd = await run_in_threadpool(guard.check_prompt, body.prompt, request_id=request_id)
            service.count("prompt", [pd.action.value])
            if pd.refused:
                raise ServiceError(
                    400,
                    "content_policy_violation",
                    str(PromptRefused(pd)),
                    decision=pd.to_dict(),
                )
            job = Cancellation(settings.request_timeout_s)
            watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
            try:
                out = await run_in_threadpool(service.generate, body, size, pd, request_id, job)
            except Cancelled as e:
                status = 503 if e.reason in ("shutdown", "reload") else 504
                raise ServiceError(status, f"generation_{e.reason}", str(e)) from e
            finally:
                watcher.cancel()
            decisions: list[Decision] = list(out.decisions)
            service.count("image", [d.action.value for d in decisions])
            data = [
                GeneratedImage(b64_json=base64.b64encode(encode_image(im)).decode("ascii"))
                for im in out.images
            ]
            return GenerationResponse(
                created=int(time.time()),
                data=data,
                safety=Safety(
                    request_id=request_id,
                    prompt=pd.to_dict(),
                    decisions=[d.to_dict() for d in decisions],
                ),
            )

    @app.post(
        "/v1/moderations/image",
        response_model=ModerationResponse,
        openapi_extra={
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ImageModerationRequest"}
                    },
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
        },
    )
    async def moderate_image(request: Request) -> ModerationResponse:
        """Judge images (base64 JSON or multipart ``file`` uploads) against the policy."""
        request_id = request.state.request_id
        images, prompt, return_images = await _read_images(request, settings)
        result = await run_in_threadpool(
            guard.moderate, images, prompt=prompt, request_id=request_id
        )
        service.count("image", [d.action.value for d in result.decisions])
        results = [
            ModerationResult(
                flagged=d.flagged,
                action=d.action.value,
                category_scores={c.value: s for c, s in d.scores.items()},
                decision=d.to_dict(),
                b64_json=base64.b64encode(encode_image(im)).decode("ascii")
                if return_images
                else None,
            )
            for im, d in zip(result.images, result.decisions, strict=True)
        ]
        return ModerationResponse(id=request_id, policy=guard.policy.name, results=results)

    @app.post("/v1/moderations")
    async def moderations(body: ModerationsRequest, request: Request) -> dict[str, Any]:
        """OpenAI's moderation endpoint: text, lists and image parts, OpenAI's categories."""
        request_id = request.state.request_id
        groups = _moderation_inputs(body, settings)

        def judge() -> list[dict[str, Any]]:
            return [openai_moderate(guard, parts, request_id=request_id) for parts in groups]

        results = await run_in_threadpool(judge)
        service.count("moderation", [r["safety_lora"]["action"] for r in results])
        return {
            "id": f"modr-{request_id}",
            "model": body.model or f"safety-lora/{guard.policy.name}",
            "results": results,
        }

    @app.post("/v1/moderations/prompt", response_model=ModerationResponse)
    async def moderate_prompt(
        body: PromptModerationRequest, request: Request
    ) -> ModerationResponse:
        """Check prompts (allow / steer / refuse) against the policy."""
        request_id = request.state.request_id
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

    @app.get("/v1/policy")
    async def policy() -> dict[str, Any]:
        """The policy in force, as validated (JSON)."""
        return {"name": guard.policy.name, "policy": guard.policy.model_dump(mode="json")}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and load: model state, requests in flight and queued."""
        model = "loaded" if service.limits is not None else "disabled"
        return {
            "status": "ok",
            "policy": guard.policy.name,
            "model": model,
            "in_flight": service.admission.active,
            "queued": service.admission.queued,
        }

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text format."""
        data, content_type = service.metrics.render()
        return Response(content=data, media_type=content_type)


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
            message = "; ".join(_describe(err) for err in e.errors())
            raise ServiceError(400, "invalid_request_error", message) from e
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


async def _cancel_on_disconnect(request: Request, job: Cancellation) -> None:
    """Cancel ``job`` when the client goes away (polled: the generation runs in a thread)."""
    while True:
        if await request.is_disconnected():
            job.cancel("disconnected", "the client disconnected")
            return
        await asyncio.sleep(0.05)


def _parse_size(
    size: str | None, max_pixels: int, native: tuple[int, int]
) -> tuple[int, int] | None:
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


def _describe(err: Any) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
    return f"{loc or 'body'}: {err.get('msg', 'invalid')}"


def _version() -> str:
    from safety_lora import __version__

    return __version__
