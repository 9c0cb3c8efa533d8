"""Where the service's images are made: ``LocalGenerator`` (its own model, one at a time).

The service only talks to a :class:`Generator`; the Ray Serve application puts a proxy to a
generator deployment in its place, and that deployment runs a ``LocalGenerator`` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from safety_lora.service.cancel import Cancellation, Cancelled
from safety_lora.service.fifo import FifoLock

if TYPE_CHECKING:
    from PIL.Image import Image

    from safety_lora.decisions import Decision, PromptDecision
    from safety_lora.policies.engine import PolicyEngine
    from safety_lora.service.settings import ServiceSettings

__all__ = ["Generated", "GenerationCall", "Generator", "Limits", "LocalGenerator"]


@dataclass(frozen=True)
class GenerationCall:
    """A request's generation arguments, plain values (they travel between processes)."""

    n: int = 1
    size: tuple[int, int] | None = None
    steps: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class Generated:
    """What the policy let through, and one decision per image."""

    images: list[Image]
    decisions: list[Decision]


@dataclass(frozen=True)
class Limits:
    """The served model's own size and the steps a request may ask for."""

    native: tuple[int, int]
    max_steps: int


class Generator(Protocol):
    """Loads a model once and generates admitted prompts under the policy."""

    def load(self) -> Limits:
        """Load the model (once, before serving); its native size and the steps allowed."""
        ...

    def generate(
        self,
        prompt: str,
        call: GenerationCall,
        prompt_decision: PromptDecision,
        request_id: str,
        job: Cancellation,
    ) -> Generated:
        """``call.n`` images of an admitted prompt under the policy; raises :class:`Cancelled` once
        ``job`` is cancelled or past its deadline."""
        ...

    def close(self) -> None:
        """Release the model (the service's shutdown)."""
        ...


class LocalGenerator:
    """One model in this process behind a FIFO lock, wrapped in a ``SafePipeline``."""

    def __init__(
        self, settings: ServiceSettings, engine: PolicyEngine, pipeline: Any | None = None
    ) -> None:
        self.settings, self.engine = settings, engine
        self._pipeline = pipeline
        self.safe: Any = None  # SafePipeline once loaded
        self.defaults: dict[str, Any] = {}  # the model's own sampling defaults
        self.lock = FifoLock()  # one model, handed to waiting requests in arrival order

    def load(self) -> Limits:
        """Load the model (a ready pipeline when one was given) and wrap it."""
        from safety_lora.pipeline import SafePipeline

        if self._pipeline is not None:
            pipe = self._pipeline
        else:
            pipe, self.defaults = _load_model(self.settings)
        side = int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
        # Schedulers index their training timesteps: past half of them some (DDIM with an
        # offset) run off the end, so the model's own limit is half its schedule.
        train = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000) or 1000)
        self.safe = SafePipeline(pipe, self.engine.policy, engine=self.engine)
        return Limits((side, side), min(self.settings.max_steps, max(1, train // 2)))

    def generate(
        self,
        prompt: str,
        call: GenerationCall,
        prompt_decision: PromptDecision,
        request_id: str,
        job: Cancellation,
    ) -> Generated:
        """One generation of an admitted prompt, stopped at its next step once ``job`` is
        cancelled or late; waiting for the model counts toward the deadline."""
        import torch

        kwargs: dict[str, Any] = {
            **self.defaults,
            "num_images_per_prompt": call.n,
            "output_type": "pil",
            "callback_on_step_end": job,
        }
        if call.size is not None:
            kwargs["width"], kwargs["height"] = call.size
        if call.seed is not None:
            kwargs["generator"] = torch.Generator().manual_seed(call.seed)
        if call.steps is not None:
            kwargs["num_inference_steps"] = call.steps
        if not self.lock.acquire(timeout=job.remaining()):
            job.check()
            raise Cancelled("deadline", "the model stayed busy past the request's deadline")
        try:
            job.check()
            out = self.safe(
                prompt,
                safety_request_id=request_id,
                safety_prompt_checks=[prompt_decision],
                **kwargs,
            )
        finally:
            self.lock.release()
        return Generated(list(out.images), list(out.decisions))

    def close(self) -> None:
        """Remove the safety adapters from the pipeline, if it was loaded."""
        if self.safe is not None:
            self.safe.close()


def _load_model(settings: ServiceSettings) -> tuple[Any, dict[str, Any]]:
    """The diffusers pipeline to serve and its default call arguments."""
    from safety_lora.loading import load_pipeline

    try:
        return load_pipeline(settings.model)
    except FileNotFoundError as e:
        if settings.model is not None:
            raise
        raise RuntimeError(f"{e}; pass --model PATH (a diffusers pipeline folder)") from e
