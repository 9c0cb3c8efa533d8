"""``ServiceState``: what every request shares, and the dependency that hands it to routes."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Request

from safety_lora.audit import AuditWriteError
from safety_lora.decisions import PromptDecision
from safety_lora.guard import SafetyGuard
from safety_lora.policies.engine import PolicyEngine
from safety_lora.service.cancel import Cancellation
from safety_lora.service.gate import Admission
from safety_lora.service.generator import (
    Generated,
    GenerationCall,
    Generator,
    Limits,
    LocalGenerator,
)
from safety_lora.service.metrics import ServiceMetrics
from safety_lora.service.schemas import GenerationRequest
from safety_lora.service.settings import ServiceSettings

__all__ = ["ServiceState", "StateDep", "service_state"]


class ServiceState:
    """The guard, the generator, admission, metrics and drain state of one app."""

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
        if engine.audit_log is not None:
            engine.audit_log.check()  # refuse to start rather than fail the first request
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
        """The model's native (width, height); (0, 0) until it is loaded."""
        return self.limits.native if self.limits is not None else (0, 0)

    @property
    def max_steps(self) -> int:
        """Denoising steps a request may ask for: the model's limit, else the setting."""
        return self.limits.max_steps if self.limits is not None else self.settings.max_steps

    @property
    def max_pixels(self) -> int:
        """Pixels per generated image: the setting, else the model's native size."""
        return self.settings.max_generation_pixels or self.native[0] * self.native[1]

    def audit_failure(self) -> str | None:
        """Why the audit log cannot be written, or None. While it is failing each call checks
        it again, so the service recovers as soon as the destination is writable."""
        log = self.guard.engine.audit_log
        if log is None or log.failure is None:
            return None
        try:
            log.check()
        except AuditWriteError as e:
            return str(e)
        return None

    def begin_drain(self) -> None:
        """Shutdown began: refuse new work; in-flight jobs get the grace time, then stop."""
        self.draining = True
        grace = max(0.0, self.settings.shutdown_timeout_s - 2.0)
        with self._jobs_lock:
            for job in self._jobs:
                job.shorten(grace, "shutdown", "the server is shutting down")

    def close(self) -> None:
        """Release the generator (at shutdown)."""
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
        return self.run(body.prompt, call, pd, request_id, job)

    def run(
        self,
        prompt: str,
        call: GenerationCall,
        pd: PromptDecision,
        request_id: str,
        job: Cancellation,
    ) -> Generated:
        """``call`` (a generation or an edit) of an admitted prompt on the generator, ``job``
        known to the drain until it ends."""
        with self._jobs_lock:
            self._jobs.add(job)
        try:
            return self.generator.generate(prompt, call, pd, request_id, job)
        finally:
            with self._jobs_lock:
                self._jobs.discard(job)

    def count(self, kind: str, actions: Sequence[str]) -> None:
        """Count one decision per action in the ``decisions`` metric."""
        for action in actions:
            self.metrics.decisions.labels(kind=kind, action=action).inc()


async def service_state(request: Request) -> ServiceState:
    """The app's :class:`ServiceState` (async: a dependency that needs no worker thread)."""
    state: ServiceState = request.app.state.service
    return state


#: A route parameter of this type receives the app's :class:`ServiceState`.
StateDep = Annotated[ServiceState, Depends(service_state)]
