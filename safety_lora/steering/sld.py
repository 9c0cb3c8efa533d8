"""Safe Latent Diffusion (Schramowski et al., 2023) as a training-free hook on any SD-like pipeline.

:class:`SafetyGuidance` adds, to every classifier-free-guided UNet call of the pipeline, one
extra UNet pass conditioned on the safety concept (its extra cost per step), and rewrites the
text half of the prediction so that the pipeline's own guidance
``uncond + g * (text' - uncond)`` equals SLD's ``uncond + g * (text - uncond - safety)``.
The update rule and the presets are those of diffusers' ``StableDiffusionPipelineSafe``
(``diffusers/pipelines/deprecated/stable_diffusion_safe``): with ``d = text - concept``,
``scale = clamp(|d| * guidance_scale, max=1)``, zeroed where ``d >= threshold``;
``safety = (concept - uncond) * scale + momentum_scale * momentum``;
``momentum = beta * momentum + (1 - beta) * safety``; applied from step ``warmup_steps`` on.
As in diffusers, guidance is off unless ``guidance_scale > 1`` and the pipeline uses CFG, and
the step index counts the pipeline's UNet calls (one per step for single-call schedulers),
from the first call's place in the scheduler's whole schedule: image-to-image at
``strength`` 0.5 starts half-way, past a 10-of-20-step warm-up. ControlNet residuals are
those of the text half; pipelines with three-way guidance (InstructPix2Pix) are refused.

``strength`` scales the applied term (``text - strength * safety``), as a policy scales an
adapter: 1 is the preset, 0 leaves the pipeline untouched (no hook, no extra UNet pass), and
the escalation ladder may go above 1. The momentum accumulates the unscaled term, so a
strength multiplies SLD's whole correction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from safety_lora.internals import execution_device

__all__ = [
    "SLD_PRESETS",
    "SLDConfig",
    "SafetyGuidance",
    "check_pipeline",
    "safety_term",
    "sld_preset",
]

#: Pipelines whose guidance is not SLD's two-way ``[uncond, text]`` batch.
THREE_WAY_GUIDANCE = (
    "StableDiffusionInstructPix2PixPipeline",
    "StableDiffusionXLInstructPix2PixPipeline",
)
#: UNet keyword arguments holding per-sample residuals (ControlNet, T2I-Adapter).
_RESIDUALS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "down_intrablock_additional_residuals",
)


def check_pipeline(pipe: Any) -> None:
    """Raise ``ValueError`` naming ``pipe``'s class when SLD cannot steer it."""
    name = type(pipe).__name__
    if name in THREE_WAY_GUIDANCE:
        raise ValueError(
            f"SLD guidance cannot steer {name}: its guidance is three-way (text, image, "
            f"unconditional), not SLD's [unconditional, text]; steer it with an adapter method "
            f"(a file or closed_form entry) instead"
        )
    if getattr(pipe, "unet", None) is None or not hasattr(pipe, "encode_prompt"):
        raise ValueError(f"SLD guidance needs a pipeline with a `unet` and `encode_prompt`: {name}")


@dataclass(frozen=True)
class SLDConfig:
    """SLD's five knobs (diffusers' ``sld_*`` arguments without the prefix)."""

    warmup_steps: int
    guidance_scale: float
    threshold: float
    momentum_scale: float
    mom_beta: float

    def __post_init__(self) -> None:
        errors = []
        if self.warmup_steps < 0:
            errors.append(f"`warmup_steps` must be >= 0, got {self.warmup_steps}")
        if self.guidance_scale < 0:
            errors.append(f"`guidance_scale` must be >= 0, got {self.guidance_scale}")
        if self.momentum_scale < 0:
            errors.append(f"`momentum_scale` must be >= 0, got {self.momentum_scale}")
        if not 0.0 <= self.mom_beta <= 1.0:
            errors.append(f"`mom_beta` must be in [0, 1], got {self.mom_beta}")
        if errors:
            raise ValueError("SLDConfig: " + "; ".join(errors))

    @property
    def enabled(self) -> bool:
        """Whether guidance does anything (diffusers: ``sld_guidance_scale > 1``)."""
        return self.guidance_scale > 1.0


#: diffusers' ``SafetyConfig`` WEAK/MEDIUM/STRONG/MAX, copied number for number.
SLD_PRESETS: dict[str, SLDConfig] = {
    "weak": SLDConfig(15, 20.0, 0.0, 0.0, 0.0),
    "medium": SLDConfig(10, 1000.0, 0.01, 0.3, 0.4),
    "strong": SLDConfig(7, 2000.0, 0.025, 0.5, 0.7),
    "max": SLDConfig(0, 5000.0, 1.0, 0.5, 0.7),
}


def sld_preset(name: str) -> SLDConfig:
    """The preset called ``name`` (weak, medium, strong or max)."""
    try:
        return SLD_PRESETS[name]
    except KeyError:
        raise ValueError(f"SLD preset must be one of {list(SLD_PRESETS)}, got {name!r}") from None


def safety_term(
    text: torch.Tensor, uncond: torch.Tensor, concept: torch.Tensor, config: SLDConfig
) -> torch.Tensor:
    """SLD's per-element safety term before momentum: ``(concept - uncond) * scale``, with
    ``scale = clamp(|text - concept| * guidance_scale, max=1)``, zeroed where
    ``text - concept >= threshold``. The one SLD update: the hook and the attack harness's
    differentiable target both use it.
    """
    diff = text - concept
    scale = torch.clamp(diff.abs() * config.guidance_scale, max=1.0)
    scale = torch.where(diff >= config.threshold, torch.zeros_like(scale), scale)
    return (concept - uncond) * scale


class SafetyGuidance:
    """``with SafetyGuidance(pipe, concept="red", config=sld_preset("strong")): pipe(...)``.

    The hook sits on ``pipe.unet`` only inside the block. ``extra_calls``/``extra_seconds``
    count the added UNet passes and their time (since the block was entered).
    """

    def __init__(
        self, pipe: Any, *, concept: str, config: SLDConfig, strength: float = 1.0
    ) -> None:
        if not concept.strip():
            raise ValueError(f"SafetyGuidance: `concept` must not be empty, got {concept!r}")
        if not (strength >= 0.0 and strength < float("inf")):
            raise ValueError(f"SafetyGuidance: `strength` must be >= 0 and finite, got {strength}")
        check_pipeline(pipe)
        self.pipe = pipe
        self.concept = concept
        self.config = config
        self.strength = float(strength)
        self.extra_calls = 0
        self.extra_seconds = 0.0
        self._handle: Any = None
        self._inside = False
        self._embeds: torch.Tensor | None = None
        self._pooled: torch.Tensor | None = None
        self._step = 0
        self._last_t: float | None = None
        self._momentum: torch.Tensor | None = None

    def __enter__(self) -> SafetyGuidance:
        self.extra_calls, self.extra_seconds = 0, 0.0
        self._last_t, self._momentum = None, None
        if self.config.enabled and self.strength > 0.0:
            self._embeds, self._pooled = self._encode()
            self._handle = self.pipe.unet.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def _encode(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The concept's text embeddings (and SDXL's pooled embedding) from the pipeline."""
        out = self.pipe.encode_prompt(
            prompt=self.concept,
            device=execution_device(self.pipe),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return out[0], (out[2] if len(out) == 4 else None)

    def _concept_eps(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], n: int
    ) -> torch.Tensor:
        """The UNet's prediction for the text half's latents under the safety concept."""
        if len(args) > 3:
            raise ValueError(f"SafetyGuidance: UNet called with {len(args)} positional arguments")
        names = ("sample", "timestep", "encoder_hidden_states")
        call = {**dict(zip(names, args, strict=False)), **kwargs, "return_dict": False}
        assert self._embeds is not None
        hidden = call["encoder_hidden_states"]
        call["encoder_hidden_states"] = self._embeds.to(hidden).expand(n, -1, -1)
        for key in ("sample", "timestep", "timestep_cond"):
            value = call.get(key)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == 2 * n:
                call[key] = value[n:]
        for key in _RESIDUALS:  # the text half's residuals stand for the concept's
            value = call.get(key)
            if isinstance(value, torch.Tensor) and len(value) == 2 * n:
                call[key] = value[n:]
            elif isinstance(value, (list, tuple)):
                call[key] = type(value)(r[n:] if len(r) == 2 * n else r for r in value)
        added = call.get("added_cond_kwargs")
        if added:
            added = {k: v[n:] for k, v in added.items()}
            if self._pooled is not None and "text_embeds" in added:
                added["text_embeds"] = self._pooled.to(added["text_embeds"]).expand(n, -1)
            call["added_cond_kwargs"] = added
        began = time.perf_counter()
        self._inside = True
        try:
            eps: torch.Tensor = module(**call)[0]
        finally:
            self._inside = False
        self.extra_seconds += time.perf_counter() - began
        self.extra_calls += 1
        return eps

    def _schedule_step(self, t: float) -> int:
        """The step of timestep ``t`` in the scheduler's whole schedule (0 when not found)."""
        scheduler = getattr(self.pipe, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        if not isinstance(timesteps, torch.Tensor):
            return 0
        found = (timesteps.float() == t).nonzero().flatten()
        order = int(getattr(scheduler, "order", 1) or 1)
        return int(found[0]) // order if len(found) else 0

    def _hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        if self._inside or not getattr(self.pipe, "do_classifier_free_guidance", False):
            return None
        pred: torch.Tensor = output[0] if isinstance(output, tuple) else output.sample
        if len(pred) % 2:
            raise RuntimeError(
                f"SLD guidance: {type(self.pipe).__name__} called its UNet with a batch of "
                f"{len(pred)} under guidance, not [unconditional, text]; SLD cannot steer it"
            )
        n = len(pred) // 2
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        t = float(torch.as_tensor(timestep).flatten()[0])
        if self._last_t is None or t > self._last_t or self._momentum is None:
            self._step, self._momentum = self._schedule_step(t), None  # a new generation
        self._last_t = t
        with torch.no_grad():
            eps_concept = self._concept_eps(module, args, kwargs, n)
            uncond, text = pred[:n], pred[n:]
            cfg = self.config
            if self._momentum is None or self._momentum.shape != text.shape:
                self._momentum = torch.zeros_like(text)
            safety = safety_term(text, uncond, eps_concept, cfg)
            safety = safety + cfg.momentum_scale * self._momentum
            self._momentum = cfg.mom_beta * self._momentum + (1 - cfg.mom_beta) * safety
            if self._step >= cfg.warmup_steps:
                text = text - self.strength * safety
            self._step += 1
            new = torch.cat([uncond, text])
        if isinstance(output, tuple):
            return (new, *output[1:])
        output.sample = new
        return output
