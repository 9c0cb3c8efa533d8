"""What an attack attacks: the pipeline's UNet as steered by one method, behind :class:`Target`.

``eps`` is the steered model's conditional noise prediction, differentiable in the text
states (what the white-box attacks optimise through); ``base()`` switches the steering off
(the reference the attacks aim at); ``steering()`` is what generation runs inside.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch

from safety_lora.internals import execution_device
from safety_lora.sld import SafetyGuidance, SLDConfig

__all__ = ["AdapterTarget", "SLDTarget", "Target", "render", "unet_eps"]

#: The adapter's name on the UNet while it is attacked.
ADAPTER_NAME = "safety_lora_attack"


class Target(Protocol):
    """A steered model."""

    name: str

    def eps(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """The steered conditional prediction for latents ``x`` at ``t`` under ``states``."""
        ...

    def base(self) -> AbstractContextManager[None]:
        """Steering off inside the block."""
        ...

    def steering(self) -> AbstractContextManager[Any]:
        """What generation runs inside (steering on)."""
        ...

    def close(self) -> None:
        """Leave the pipeline as it was."""
        ...


def unet_eps(pipe: Any, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``pipe.unet``'s prediction for ``x`` at ``t`` (one or per row) under text ``states``."""
    steps = t.to(x.device).expand(len(x)) if t.dim() == 0 else t.to(x.device)
    return pipe.unet(x, steps, encoder_hidden_states=states.to(x)).sample  # type: ignore[no-any-return]


class AdapterTarget:
    """An adapter file (any format the project reads) on the UNet at ``strength``; none: the
    base model itself (nothing erased)."""

    def __init__(
        self, pipe: Any, adapter: Path | None, *, strength: float = 1.0, name: str | None = None
    ) -> None:
        self.pipe, self.adapter, self.strength = pipe, adapter, strength
        self.name = name or ("base" if adapter is None else adapter.stem)
        if adapter is not None:
            from safety_lora.adapters import load_adapter

            present = sorted(getattr(pipe.unet, "peft_config", None) or {})
            if present:
                raise ValueError(f"attack: `pipe.unet` already carries adapters {present}")
            load_adapter(pipe.unet, adapter, adapter_name=ADAPTER_NAME)
            pipe.unet.set_adapters([ADAPTER_NAME], [strength])

    def eps(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return unet_eps(self.pipe, x, t, states)

    @contextmanager
    def base(self) -> Iterator[None]:
        if self.adapter is None:
            yield
            return
        self.pipe.unet.disable_adapters()
        try:
            yield
        finally:
            self.pipe.unet.enable_adapters()

    def steering(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def close(self) -> None:
        if self.adapter is not None:
            self.pipe.unet.unload_lora()


class SLDTarget:
    """Safe Latent Diffusion away from ``concept``: its edit of the text prediction, without
    the momentum term (which depends on the sampling path), applied from the warm-up step on."""

    def __init__(
        self,
        pipe: Any,
        *,
        concept: str,
        config: SLDConfig,
        strength: float = 1.0,
        num_inference_steps: int,
        name: str | None = None,
    ) -> None:
        from safety_lora.attack.text import PromptEncoder

        self.pipe, self.concept, self.config, self.strength = pipe, concept, config, strength
        self.name = name or f"SLD ({concept})"
        encoder = PromptEncoder(pipe)
        self._concept, self._empty = encoder.encode([concept]), encoder.encode([""])
        schedule = type(pipe.scheduler).from_config(pipe.scheduler.config)
        schedule.set_timesteps(num_inference_steps)
        steps = schedule.timesteps
        warm = min(config.warmup_steps, len(steps))
        # Timesteps at or below this one are steered (none when warm-up outlasts sampling).
        self._from_t = float(steps[warm]) if warm < len(steps) else -1.0

    def eps(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        text = unet_eps(self.pipe, x, t, states)
        if not self.config.enabled or self.strength == 0.0:
            return text
        n = len(x)
        with torch.no_grad():
            both = unet_eps(
                self.pipe,
                torch.cat([x, x]),
                torch.cat([t.expand(n), t.expand(n)]) if t.dim() else torch.cat([t, t]),
                torch.cat([self._empty.expand(n, -1, -1), self._concept.expand(n, -1, -1)]),
            )
        uncond, concept = both.chunk(2)
        diff = text - concept
        scale = torch.clamp(diff.abs() * self.config.guidance_scale, max=1.0)
        scale = torch.where(diff >= self.config.threshold, torch.zeros_like(scale), scale)
        steps = t.expand(n) if t.dim() == 0 else t
        on = (steps.to(x.device).float() <= self._from_t).to(x.dtype).view(-1, 1, 1, 1)
        return text - on * self.strength * (concept - uncond) * scale

    @contextmanager
    def base(self) -> Iterator[None]:
        yield

    def steering(self) -> AbstractContextManager[Any]:
        return SafetyGuidance(
            self.pipe, concept=self.concept, config=self.config, strength=self.strength
        )

    def close(self) -> None:
        return None


def render(
    pipe: Any,
    states: torch.Tensor,
    seeds: Sequence[int],
    *,
    empty: torch.Tensor,
    num_inference_steps: int,
    guidance_scale: float,
    output_type: str = "pil",
) -> Any:
    """One image per row of ``states`` with the seed of that row (``torch.Generator`` each)."""
    if len(states) != len(seeds):
        raise ValueError(f"render: {len(states)} prompts but {len(seeds)} seeds")
    device = execution_device(pipe)
    gens = [torch.Generator(device).manual_seed(int(s)) for s in seeds]
    with torch.no_grad():
        out = pipe(
            prompt_embeds=states.to(device),
            negative_prompt_embeds=empty.to(device).expand(len(states), -1, -1),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=gens,
            output_type=output_type,
        )
    return out.images
