"""The white-box attacks' objective: make the steered model denoise as the base model does.

UnlearnDiffAtk (Zhang et al., 2024; ``OPTML-Group/Diffusion-MU-Attack``) noises latents
``x0`` of images the *base* model made for the concept prompt to a random timestep ``t`` and
minimises the steered model's noise-prediction error under the attack prompt. We keep its
``x0`` and its noising, and, as AdvUnlearn's attack step (``OPTML-Group/AdvUnlearn``) does,
aim at the base model's prediction for the concept prompt, ``eps_base(x_t, t, c)``, instead
of the drawn noise: the same minimiser with far less variance per step, which matters at the
small budgets a CPU affords.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.workbench.attack.targets import Target, render

__all__ = ["Draw", "Objective"]


@dataclass(frozen=True)
class Draw:
    """One minibatch: noised latents, their timesteps and the base model's prediction."""

    x: torch.Tensor
    t: torch.Tensor
    want: torch.Tensor


@dataclass
class Objective:
    """The objective for one concept prompt on one target (``batch`` draws per step)."""

    target: Target
    encoder: PromptEncoder
    concept: torch.Tensor
    x0: torch.Tensor
    alphas: torch.Tensor
    batch: int = 4

    @classmethod
    def build(
        cls,
        pipe: Any,
        target: Target,
        encoder: PromptEncoder,
        prompt: str,
        seeds: Sequence[int],
        *,
        num_inference_steps: int,
        guidance_scale: float,
        batch: int = 4,
    ) -> Objective:
        """The base model's latents of ``prompt`` with ``seeds`` as the images to recover."""
        concept = encoder.encode([prompt])
        with target.base():
            x0 = render(
                pipe,
                concept.expand(len(seeds), -1, -1),
                seeds,
                empty=encoder.encode([""]),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                output_type="latent",
            )
        alphas = pipe.scheduler.alphas_cumprod.to(x0.device, torch.float32)
        return cls(target, encoder, concept, torch.as_tensor(x0), alphas, batch)

    def draw(self, generator: torch.Generator) -> Draw:
        """``batch`` (latent, timestep, noise) triples from ``generator``; targets without grad."""
        pick = torch.randint(len(self.x0), (self.batch,), generator=generator)
        t = torch.randint(len(self.alphas), (self.batch,), generator=generator)
        noise = torch.randn(self.x0[pick].shape, generator=generator).to(self.x0)
        a = self.alphas[t].view(-1, 1, 1, 1).to(self.x0)
        x = a.sqrt() * self.x0[pick] + (1 - a).sqrt() * noise
        with torch.no_grad(), self.target.base():
            want = self.target.eps(x, t, self.concept.expand(self.batch, -1, -1))
        return Draw(x=x, t=t, want=want)

    def losses(self, states: torch.Tensor, draw: Draw) -> torch.Tensor:
        """Mean squared error per row of ``states`` (``[m, length, dim]``) over the draw."""
        m, b = len(states), len(draw.x)
        pred = self.target.eps(
            draw.x.repeat(m, 1, 1, 1), draw.t.repeat(m), states.repeat_interleave(b, dim=0)
        )
        err = (pred - draw.want.repeat(m, 1, 1, 1)).pow(2)
        return err.reshape(m, -1).mean(dim=1)
