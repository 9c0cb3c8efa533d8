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

from safety_lora.conditioning import unet_eps
from safety_lora.internals import execution_device
from safety_lora.steering import Steering, embedding_method, file_method, single, sld_method
from safety_lora.steering.embedding import _take_out
from safety_lora.steering.sld import safety_term, sld_preset

__all__ = ["AdapterTarget", "EmbeddingTarget", "SLDTarget", "Target", "render"]

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


class AdapterTarget:
    """An adapter file (any format the project reads) on the UNet at ``strength``, owned by the
    runtime's :class:`~safety_lora.steering.Steering` as a policy's file entry is; none: the
    base model itself (nothing erased). ``base()`` is strength 0 on the same path."""

    def __init__(
        self, pipe: Any, adapter: Path | None, *, strength: float = 1.0, name: str | None = None
    ) -> None:
        self.pipe, self.adapter, self.strength = pipe, adapter, strength
        self.name = name or ("base" if adapter is None else adapter.stem)
        self.owner: Steering | None = None
        if adapter is not None:
            present = sorted(getattr(pipe.unet, "peft_config", None) or {})
            if present:
                raise ValueError(f"attack: `pipe.unet` already carries adapters {present}")
            method = file_method(adapter, name=ADAPTER_NAME, strength=strength)
            self.owner = Steering(pipe, single(method))

    def eps(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return unet_eps(self.pipe, x, t, states)

    def base(self) -> AbstractContextManager[None]:
        return nullcontext() if self.owner is None else self.owner.at({ADAPTER_NAME: 0.0})

    def steering(self, pipe: Any = None) -> AbstractContextManager[Any]:
        """Nothing to switch: the adapter is on the UNet ``pipe`` (any derived one) shares."""
        return nullcontext()

    def close(self) -> None:
        if self.owner is not None:
            self.owner.close()


class _SwitchedTarget:
    """A target whose steering is a hook the runtime's owner installs per call (SLD, text
    embedding): ``eps`` applies it by hand unless inside :meth:`base`."""

    owner: Steering
    _off: bool = False

    @contextmanager
    def base(self) -> Iterator[None]:
        self._off = True
        try:
            yield
        finally:
            self._off = False

    def steering(self, pipe: Any = None) -> AbstractContextManager[Any]:
        """Steering on for a call of ``pipe`` (a pipeline derived from the target's; default
        its own)."""
        return self.owner.apply({}, pipe=pipe)

    def close(self) -> None:
        self.owner.close()


class SLDTarget(_SwitchedTarget):
    """Safe Latent Diffusion away from ``concept``: its edit of the text prediction, without
    the momentum term (which depends on the sampling path), applied from the warm-up step on."""

    def __init__(
        self,
        pipe: Any,
        *,
        concept: str,
        preset: str,
        strength: float = 1.0,
        num_inference_steps: int,
        name: str | None = None,
    ) -> None:
        from safety_lora.prompt_encoder import PromptEncoder

        config = sld_preset(preset)
        self.pipe, self.concept, self.config, self.strength = pipe, concept, config, strength
        self.name = name or f"SLD ({concept})"
        self.owner = Steering(pipe, single(sld_method(concept, preset=preset, strength=strength)))
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
        if self._off or not self.config.enabled or self.strength == 0.0:
            return text
        n = len(x)
        with torch.no_grad():
            both = unet_eps(
                self.pipe,
                torch.cat([x, x]),
                torch.cat([t.expand(n), t.expand(n)]) if t.dim() == 0 else torch.cat([t, t]),
                torch.cat([self._empty.expand(n, -1, -1), self._concept.expand(n, -1, -1)]),
            )
        uncond, concept = both.chunk(2)
        steps = t.expand(n) if t.dim() == 0 else t
        on = (steps.to(x.device).float() <= self._from_t).to(x.dtype).view(-1, 1, 1, 1)
        return text - on * self.strength * safety_term(text, uncond, concept, self.config)


class EmbeddingTarget(_SwitchedTarget):
    """Text-embedding steering of ``concept`` (``steering.text``) at ``strength``: ``eps`` takes
    the concept out of the states per token as the runtime does, differentiably in them."""

    def __init__(
        self, pipe: Any, *, concept: str, strength: float = 1.0, name: str | None = None
    ) -> None:
        self.pipe, self.strength = pipe, strength
        self.name = name or f"text-embedding x{strength:g}"
        self.owner = Steering(pipe, single(embedding_method(concept, strength=strength)))
        assert self.owner.embedding is not None
        self.text = self.owner.embedding

    def steered(self, states: torch.Tensor) -> torch.Tensor:
        """``states`` as the steered pipeline's ``encode_prompt`` returns them, with grad."""
        on = self.text.cosines(states) >= self.text.threshold
        tokens = on.any(dim=-1)
        found = self.text._encode(None)  # the directions steer() uses (it runs without grad)
        out = states.clone()
        out[tokens] = _take_out(
            states[tokens], on[tokens], found.hidden.to(states), found.anchor, self.strength
        )
        return out

    def eps(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return unet_eps(self.pipe, x, t, states if self._off else self.steered(states))


def render(
    pipe: Any,
    states: torch.Tensor,
    seeds: Sequence[int],
    *,
    empty: torch.Tensor,
    num_inference_steps: int,
    guidance_scale: float,
    output_type: str = "pil",
    latents: torch.Tensor | None = None,
) -> Any:
    """One image per row of ``states`` with the seed of that row (``torch.Generator`` each),
    or from ``latents`` (one row per image) when given."""
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
            latents=None if latents is None else latents.to(device),
        )
    return out.images
