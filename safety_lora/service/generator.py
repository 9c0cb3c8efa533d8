"""Where the service's images are made: ``LocalGenerator`` (its own model, one at a time).

The service only talks to a :class:`Generator`; the Ray Serve application puts a proxy to a
generator deployment in its place, and that deployment runs a ``LocalGenerator`` itself.
A :class:`GenerationCall` with ``images`` is an edit: image-to-image, or inpainting of the
first image where ``mask`` is given, through pipelines derived from the served one at load
(``SafePipeline.derive``), so inputs are judged and outputs steered and judged as ever.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
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

logger = logging.getLogger("safety_lora.service")


@dataclass(frozen=True)
class GenerationCall:
    """A request's generation arguments, plain values (they travel between processes).

    An edit gives ``images`` (RGB, already at the output size), ``n`` images made from each;
    ``mask`` (mode ``L``, white where to repaint, the first image's size) inpaints the first
    image, the others go image-to-image; ``strength`` is how far from each image to go.
    """

    n: int = 1
    size: tuple[int, int] | None = None
    steps: int | None = None
    seed: int | None = None
    images: tuple[Image, ...] = ()
    mask: Image | None = None
    strength: float = 0.8


@dataclass(frozen=True)
class Generated:
    """What the policy let through, and one decision per image."""

    images: list[Image]
    decisions: list[Decision]


@dataclass(frozen=True)
class Limits:
    """The served model's own size, the steps a request may ask for and gets by default, and
    why it cannot edit images (``edits_unavailable``; empty when it can)."""

    native: tuple[int, int]
    max_steps: int
    default_steps: int = 50
    edits_unavailable: str = ""


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
        """``call.n`` images of an admitted prompt (per input image, for an edit) under the
        policy; raises :class:`Cancelled` once ``job`` is cancelled or past its deadline."""
        ...

    def close(self) -> None:
        """Release the model (the service's shutdown)."""
        ...


class LocalGenerator:
    """One model in this process behind a FIFO lock, wrapped in a ``SafePipeline``; its
    image-to-image and inpainting pipelines are derived from it once, at load."""

    def __init__(
        self, settings: ServiceSettings, engine: PolicyEngine, pipeline: Any | None = None
    ) -> None:
        self.settings, self.engine = settings, engine
        self._pipeline = pipeline
        self.safe: Any = None  # SafePipeline once loaded
        self.edit: dict[str, Any] = {}  # "img2img" / "inpaint": derived SafePipelines
        self.defaults: dict[str, Any] = {}  # the model's own sampling defaults
        self.lock = FifoLock()  # one model, handed to waiting requests in arrival order

    def load(self) -> Limits:
        """Load the model (a ready pipeline when one was given), wrap it, derive its edit
        pipelines (a model without them still generates; edits then say why not)."""
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
        unavailable = self._derive_edits()
        steps = self.defaults.get("num_inference_steps") or _default_steps(pipe)
        return Limits(
            (side, side),
            min(self.settings.max_steps, max(1, train // 2)),
            default_steps=int(steps),
            edits_unavailable=unavailable,
        )

    def _derive_edits(self) -> str:
        """Build the image-to-image and inpainting pipelines from the served one (same
        components, same steering); '' on success, else why edits are unavailable."""
        from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

        progress = dict(getattr(self.safe.pipe, "_progress_bar_config", {}))
        for mode, auto in (
            ("img2img", AutoPipelineForImage2Image),
            ("inpaint", AutoPipelineForInpainting),
        ):
            try:
                derived = auto.from_pipe(self.safe.pipe)
                derived.set_progress_bar_config(**progress)
                self.edit[mode] = self.safe.derive(derived)
            except (ValueError, TypeError) as e:
                self.edit.clear()
                reason = f"{type(self.safe.pipe).__name__} has no {mode} pipeline here: {e}"
                logger.warning("image edits are unavailable: %s", reason)
                return reason
        return ""

    def generate(
        self,
        prompt: str,
        call: GenerationCall,
        prompt_decision: PromptDecision,
        request_id: str,
        job: Cancellation,
    ) -> Generated:
        """One generation (or edit) of an admitted prompt, stopped at its next step once
        ``job`` is cancelled or late; waiting for the model counts toward the deadline.

        An edit makes ``call.n`` images from each input image in turn (image-major) and stops
        at the first input the policy refuses: its refusals end the result."""
        import torch

        if call.images and not self.edit:
            raise ValueError("this model cannot edit images (see Limits.edits_unavailable)")
        kwargs: dict[str, Any] = {
            **self.defaults,
            "num_images_per_prompt": call.n,
            "output_type": "pil",
            "callback_on_step_end": job,
        }
        if call.steps is not None:
            kwargs["num_inference_steps"] = call.steps
        calls: list[tuple[Any, dict[str, Any]]] = []
        if not call.images:
            if call.size is not None:
                kwargs["width"], kwargs["height"] = call.size
            calls.append((self.safe, kwargs))
        for i, image in enumerate(call.images):
            own = {**kwargs, "image": image, "strength": call.strength}
            if i == 0 and call.mask is not None:
                own["mask_image"] = call.mask
                own["width"], own["height"] = image.size
                calls.append((self.edit["inpaint"], own))
            else:
                calls.append((self.edit["img2img"], own))
        images: list[Image] = []
        decisions: list[Decision] = []
        if not self.lock.acquire(timeout=job.remaining()):
            job.check()
            raise Cancelled("deadline", "the model stayed busy past the request's deadline")
        try:
            for safe, own in calls:
                job.check()
                if call.seed is not None:
                    own["generator"] = torch.Generator().manual_seed(call.seed)
                with _quiet_copies() if "image" in own else nullcontext():
                    out = safe(
                        prompt,
                        safety_request_id=request_id,
                        safety_prompt_checks=[prompt_decision],
                        **own,
                    )
                images.extend(out.images)
                decisions.extend(out.decisions)
                if any(d.input_name for d in out.decisions):
                    break  # an input was refused: the request is
        finally:
            self.lock.release()
        return Generated(images, decisions)

    def close(self) -> None:
        """Remove the safety adapters from the pipeline, if it was loaded."""
        if self.safe is not None:
            self.safe.close()


@contextmanager
def _quiet_copies() -> Iterator[None]:
    """diffusers' image-to-image warns (FutureWarning) whenever ``num_images_per_prompt`` > 1
    makes it copy the one init image, which is how an edit asks for ``n`` images: silenced
    for the call (warning filters are process-wide; the model lock serialises these calls)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"You have passed \d+ text prompts", category=FutureWarning
        )
        yield


def _default_steps(pipe: Any) -> int:
    """The denoising steps ``pipe`` runs when a call names none (its ``__call__`` default)."""
    parameter = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    default = getattr(parameter, "default", None)
    return default if isinstance(default, int) else 50


def _load_model(settings: ServiceSettings) -> tuple[Any, dict[str, Any]]:
    """The diffusers pipeline to serve and its default call arguments."""
    from safety_lora.loading import load_pipeline

    try:
        return load_pipeline(settings.model)
    except FileNotFoundError as e:
        if settings.model is not None:
            raise
        raise RuntimeError(f"{e}; pass --model PATH (a diffusers pipeline folder)") from e
