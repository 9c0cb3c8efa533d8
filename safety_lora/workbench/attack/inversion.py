"""Latent inversion: an image of the concept, inverted to the noise that regenerates it.

Memories of Forgotten Concepts (Rusanovsky et al., CVPR 2025;
``matanr/Memories_of_Forgotten_Concepts``) and TINA invert an image of the erased concept
through the *erased* model under a neutral prompt and generate from the latent found: the
concept comes back with no prompt asking for it. :func:`ddim_invert` is plain DDIM inversion
(the paper refines it with null-text inversion or ReNoise); the image-to-image variant hands
the image to an img2img pipeline at a strength, as an editing endpoint does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL.Image import Image

__all__ = ["ddim_invert", "ddim_sampling", "encode_images", "img2img_pipeline"]

#: A noise prediction: latents ``x`` at timestep ``t`` under text states.
Eps = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def encode_images(pipe: Any, images: Sequence[Image]) -> torch.Tensor:
    """The VAE latents of ``images`` (the distribution's mean, scaled as the UNet sees them)."""
    pixels = pipe.image_processor.preprocess(list(images)).to(pipe.vae.device, pipe.vae.dtype)
    latents: torch.Tensor = pipe.vae.encode(pixels).latent_dist.mean
    scaled: torch.Tensor = latents * pipe.vae.config.scaling_factor
    return scaled


def _ddim(pipe: Any) -> Any:
    """A DDIM scheduler with ``pipe``'s noise schedule."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(pipe.scheduler.config)


@contextmanager
def ddim_sampling(pipe: Any) -> Iterator[None]:
    """``pipe`` samples with DDIM inside the block (its own scheduler is put back after)."""
    own = pipe.scheduler
    pipe.scheduler = _ddim(pipe)
    try:
        yield
    finally:
        pipe.scheduler = own


@torch.no_grad()
def ddim_invert(
    pipe: Any,
    eps: Eps,
    x0: torch.Tensor,
    states: torch.Tensor,
    *,
    empty: torch.Tensor,
    num_inference_steps: int,
    guidance_scale: float,
) -> torch.Tensor:
    """The latents DDIM sampling under ``states`` (guided against ``empty``) takes to ``x0``:
    each sampling step run backwards with ``eps`` at the step's timestep."""
    schedule = _ddim(pipe)
    schedule.set_timesteps(num_inference_steps)
    alphas = schedule.alphas_cumprod.to(torch.float32)
    ratio = schedule.config.num_train_timesteps // num_inference_steps
    n = len(x0)
    cond = states.expand(n, -1, -1)
    guided = guidance_scale != 1.0 and not torch.equal(states, empty)
    x = x0.to(torch.float32)
    for t in schedule.timesteps.flip(0):
        before = int(t) - ratio
        a_prev = alphas[before] if before >= 0 else schedule.final_alpha_cumprod
        a_t = alphas[int(t)]
        e = eps(x, t, cond)
        if guided:
            uncond = eps(x, t, empty.expand(n, -1, -1))
            e = uncond + guidance_scale * (e - uncond)
        x0_pred = (x - (1 - a_prev).sqrt() * e) / a_prev.sqrt()
        x = a_t.sqrt() * x0_pred + (1 - a_t).sqrt() * e
    return x


def img2img_pipeline(pipe: Any) -> Any:
    """The image-to-image pipeline on ``pipe``'s components (the same UNet, so the same
    steering), as the service derives it."""
    from diffusers import AutoPipelineForImage2Image

    derived = AutoPipelineForImage2Image.from_pipe(pipe)
    derived.set_progress_bar_config(disable=True)
    return derived
