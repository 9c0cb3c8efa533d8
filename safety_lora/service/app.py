"""``create_app``: the FastAPI service (OpenAI-shaped generation, moderation, policy, health).

The routes live in :mod:`safety_lora.service.routes`, one router per area; what they share
is the app's :class:`~safety_lora.service.state.ServiceState`, in ``app.state.service``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from safety_lora.asgi import error_envelope
from safety_lora.audit import AuditWriteError
from safety_lora.policies.engine import PolicyEngine
from safety_lora.review.errors import ReviewStoreError
from safety_lora.service.errors import ServiceError, describe_errors
from safety_lora.service.gate import Gate
from safety_lora.service.generator import Generator
from safety_lora.service.routes import edits, generation, moderation, ops, review
from safety_lora.service.schemas import ImageModerationRequest
from safety_lora.service.settings import ServiceSettings
from safety_lora.service.state import ServiceState

__all__ = ["create_app"]

logger = logging.getLogger("safety_lora.service")


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
    service = ServiceState(settings, pipeline, engine=engine, generator=generator)
    app = FastAPI(
        title="safety-lora",
        summary="Content-safety layer for diffusion pipelines: generation and moderation.",
        version=_version(),
        lifespan=_lifespan,
        exception_handlers={
            ServiceError: _service_error,
            RequestValidationError: _invalid,
            AuditWriteError: _audit_failed,
            ReviewStoreError: review.review_unavailable,
        },
    )
    app.state.service = service
    if settings.generation:
        app.include_router(generation.router)
        app.include_router(edits.router)
    app.include_router(moderation.router)
    app.include_router(ops.router)
    if review.enabled(settings, service.guard.review_queue):
        app.include_router(review.router)
    app.add_middleware(
        Gate, settings=settings, metrics=service.metrics, admission=service.admission
    )
    app.openapi = partial(_openapi, app, app.openapi)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """FastAPI's document, with the image moderation route's JSON body and the edit route's
    form in the schemas they reference (those routes read their bodies themselves, so FastAPI
    does not see the models)."""
    if app.openapi_schema is None:
        schemas = build().setdefault("components", {}).setdefault("schemas", {})
        schemas["ImageModerationRequest"] = ImageModerationRequest.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        schemas["ImageEditRequest"] = edits.request_schema()
    document: dict[str, Any] | None = app.openapi_schema
    assert document is not None  # FastAPI's build keeps it on the app
    return document


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Warn when the service is open, load the model before serving, release it at exit."""
    service: ServiceState = app.state.service
    settings = service.settings
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


async def _service_error(request: Request, e: ServiceError) -> JSONResponse:
    """A refused request as its status and error envelope."""
    return JSONResponse(error_envelope(e.code, str(e), **e.extra), status_code=e.status)


async def _audit_failed(request: Request, e: AuditWriteError) -> JSONResponse:
    """A decision that could not be audited is not served: 503 (the path goes to the log, not
    to the client), counted; ``/healthz`` says not ready until a write or check succeeds."""
    service: ServiceState = request.app.state.service
    service.metrics.audit_failures.inc()
    logger.error("%s: requests are refused (503) until it can be written", e)
    body = error_envelope(
        "audit_unavailable",
        "the audit log cannot be written, so no decision is served; retry later",
    )
    return JSONResponse(body, status_code=503, headers={"retry-after": "5"})


async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    """Request validation errors as a 400 ``invalid_request`` envelope (not FastAPI's 422)."""
    body = error_envelope(
        "invalid_request", describe_errors(e.errors()), type="invalid_request_error"
    )
    return JSONResponse(body, status_code=400)


def _version() -> str:
    from safety_lora import __version__

    return __version__
