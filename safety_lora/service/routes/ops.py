"""Operations routes: the policy in force, health and load, Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from safety_lora.service.state import StateDep

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/policy")
async def policy(service: StateDep) -> dict[str, Any]:
    """The policy in force, as validated (JSON)."""
    guard = service.guard
    return {"name": guard.policy.name, "policy": guard.policy.model_dump(mode="json")}


@router.get("/healthz", response_model=None)
async def healthz(service: StateDep) -> dict[str, Any] | JSONResponse:
    """Readiness and load: model state, requests in flight and queued; 503 with a ``reason``
    while the audit log cannot be written (no decision is served then)."""
    model = "loaded" if service.limits is not None else "disabled"
    body: dict[str, Any] = {
        "status": "ok",
        "policy": service.guard.policy.name,
        "model": model,
        "in_flight": service.admission.active,
        "queued": service.admission.queued,
    }
    if service.audit_failure() is not None:
        body.update(status="unavailable", reason="the audit log cannot be written")
        return JSONResponse(body, status_code=503)
    return body


@router.get("/metrics", response_class=Response)
async def metrics(service: StateDep) -> Response:
    """Prometheus text format."""
    data, content_type = service.metrics.render()
    return Response(content=data, media_type=content_type)
