"""How ESD calls and samples a pipeline's denoiser: a UNet (SD, SDXL) or a transformer (SD3, Flux,
PixArt).

UNets and PixArt predict noise and are sampled with DDIM over the base's noise schedule
(trailing spacing, no clipping; PixArt's learned-variance half of the output is dropped, as
its pipeline does). Transformers predict a flow velocity and are sampled with the
deterministic flow-matching Euler step over the sigmas their pipeline would use (Flux:
``linspace(1, 1/n, n)``; the scheduler's resolution shift ``mu`` where it asks for one). ESD's
target is a linear combination of predictions, so it holds for velocities as for noise.
Flux works on packed 2x2 latent patches: latents stay packed throughout (i.i.d. noise is the
same in either layout) and get the patch ids the pipeline would pass. Flux models with a
guidance embedding (Flux-dev) take ``guidance_scale`` there instead of two passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from safety_lora.adapters.names import denoiser_part
from safety_lora.conditioning import PromptBank, denoiser_family

__all__ = ["Denoiser", "Sampler"]


@dataclass(frozen=True)
class Denoiser:
    """The denoiser of a pipeline, callable on latents and rows of a :class:`PromptBank`.

    ``shape`` is one latent as the model takes it (Flux: packed), ``side`` the latent's side.
    """

    module: Any
    family: Literal["unet", "sd3", "flux", "pixart"]
    shape: tuple[int, ...]
    side: int
    img_ids: torch.Tensor | None
    guidance: float | None

    @classmethod
    def of(cls, pipe: Any, guidance_scale: float) -> Denoiser:
        """``pipe``'s denoiser at the pipeline's default resolution."""
        family = denoiser_family(pipe)
        module = getattr(pipe, denoiser_part(pipe))
        config = module.config
        side = getattr(pipe, "default_sample_size", None) or config.sample_size
        side = int(side if isinstance(side, int) else side[0])
        if family != "flux":
            return cls(module, family, (int(config.in_channels), side, side), side, None, None)
        half = side // 2
        ids = torch.zeros(half, half, 3)
        ids[..., 1] += torch.arange(half)[:, None]
        ids[..., 2] += torch.arange(half)[None, :]
        guidance = guidance_scale if config.guidance_embeds else None
        shape = (half * half, int(config.in_channels))
        ids = ids.reshape(half * half, 3).to(module.device)
        return cls(module, family, shape, side, ids, guidance)

    @property
    def distilled_guidance(self) -> bool:
        """Guidance is an input of the model (Flux-dev): no classifier-free second pass."""
        return self.guidance is not None

    def __call__(
        self, x: torch.Tensor, t: torch.Tensor, bank: PromptBank, rows: torch.Tensor
    ) -> torch.Tensor:
        """The prediction for latents ``x`` at timesteps ``t`` (0-d or per row) under ``rows``."""
        steps = t.to(x.device).expand(len(x)) if t.dim() == 0 else t.to(x.device)
        if self.family == "unet":
            out = self.module(x, steps, **bank.unet_kwargs(rows)).sample
            return out  # type: ignore[no-any-return]
        if self.family == "pixart":
            assert bank.mask is not None
            out = self.module(
                x, encoder_hidden_states=bank.hidden[rows], encoder_attention_mask=bank.mask[rows],
                timestep=steps, added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                return_dict=False,
            )[0]  # fmt: skip
            # a learned-sigma model predicts (noise, variance): the pipeline keeps the noise
            return out[:, : x.shape[1]]  # type: ignore[no-any-return]
        assert bank.pooled is not None
        kwargs: dict[str, Any] = {
            "hidden_states": x,
            "encoder_hidden_states": bank.hidden[rows],
            "pooled_projections": bank.pooled[rows],
            "return_dict": False,
        }
        if self.family == "sd3":
            return self.module(timestep=steps, **kwargs)[0]  # type: ignore[no-any-return]
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((len(x),), self.guidance, device=x.device)
        out = self.module(
            timestep=steps / 1000, guidance=guidance, txt_ids=bank.text_ids, img_ids=self.img_ids,
            **kwargs,
        )  # fmt: skip
        return out[0]  # type: ignore[no-any-return]


class Sampler:
    """``steps`` deterministic sampling steps from pure noise: ``timesteps`` and ``step``."""

    def __init__(self, pipe: Any, denoiser: Denoiser, steps: int) -> None:
        self.flow = denoiser.family in ("sd3", "flux")
        if self.flow:
            self.scheduler = _flow(pipe, denoiser, steps)
            self.sigmas: torch.Tensor = self.scheduler.sigmas.to(torch.float32)
            self.init_noise_sigma = 1.0
        else:
            self.scheduler = _ddim(pipe, steps)
            self.init_noise_sigma = float(self.scheduler.init_noise_sigma)
        self.timesteps: torch.Tensor = self.scheduler.timesteps

    def step(self, prediction: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``x`` one step on from timestep ``t`` (stateless: partial runs may restart)."""
        if not self.flow:
            return self.scheduler.step(prediction, t, x).prev_sample  # type: ignore[no-any-return]
        i = int(torch.nonzero(self.timesteps == t)[0])
        return x + (self.sigmas[i + 1] - self.sigmas[i]).to(x.device) * prediction


def _ddim(pipe: Any, steps: int) -> Any:
    from diffusers import DDIMScheduler

    cfg = pipe.scheduler.config
    if "beta_start" not in cfg:
        raise ValueError(
            f"ESD on a UNet samples with DDIM over the base's noise schedule; "
            f"{type(pipe.scheduler).__name__} has none (no beta_start)"
        )
    scheduler = DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
        beta_schedule=cfg.beta_schedule,
        trained_betas=cfg.get("trained_betas"),
        prediction_type=cfg.get("prediction_type", "epsilon"),
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )
    scheduler.set_timesteps(steps)
    return scheduler


def _flow(pipe: Any, denoiser: Denoiser, steps: int) -> Any:
    """A fresh copy of ``pipe``'s flow-matching scheduler, set as its pipeline would."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if not hasattr(pipe.scheduler, "sigmas") or "shift" not in pipe.scheduler.config:
        raise ValueError(
            f"ESD on a transformer denoiser samples with flow-matching Euler; the pipeline's "
            f"scheduler {type(pipe.scheduler).__name__} is not a flow-matching one"
        )
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    cfg = scheduler.config
    kwargs: dict[str, Any] = {}
    if cfg.get("use_dynamic_shifting"):
        seq = denoiser.shape[0] if denoiser.family == "flux" else _patches(denoiser)
        kwargs["mu"] = calculate_shift(
            seq,
            cfg.get("base_image_seq_len", 256),
            cfg.get("max_image_seq_len", 4096),
            cfg.get("base_shift", 0.5),
            cfg.get("max_shift", 1.15),
        )
    if denoiser.family == "flux":
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        scheduler.set_timesteps(**kwargs)
    else:
        scheduler.set_timesteps(steps, **kwargs)
    return scheduler


def _patches(denoiser: Denoiser) -> int:
    patch = int(denoiser.module.config.patch_size)
    return (denoiser.shape[1] // patch) * (denoiser.shape[2] // patch)
