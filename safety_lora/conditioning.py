"""Prompt conditioning for the denoiser, encoded once (SD, SDXL, SD3, Flux), and the UNet's
noise prediction under given text states: what the closed-form solve, ESD training and the
attacks share.

The text encoders are frozen during ESD training and the closed-form solve, so every prompt
is encoded once up front and rows are gathered per step. SDXL adds the pooled embedding of
the second encoder and ``add_time_ids`` (original size, crop (0, 0), target size = the latent size
times the VAE scale); its empty prompt is all zeros when the pipeline's
``force_zeros_for_empty_prompt`` is set, as the SDXL pipeline's unconditional branch is.
SD3 and Flux (transformer denoisers) keep the pooled CLIP embedding their pipelines pass as
``pooled_projections``; Flux also its text ids, and T5 prompts up to the tokenizer's length
(at most 512, the pipeline's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["PromptBank", "denoiser_family", "unet_eps"]


def denoiser_family(pipe: Any) -> Literal["unet", "sd3", "flux", "pixart"]:
    """Which denoiser ``pipe`` has: a UNet (SD, SDXL), an SD3, Flux or PixArt transformer."""
    if getattr(pipe, "unet", None) is not None:
        return "unet"
    transformer = getattr(pipe, "transformer", None)
    name = type(transformer).__name__
    if name.startswith("SD3"):
        return "sd3"
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("PixArt"):
        return "pixart"
    raise ValueError(
        f"{type(pipe).__name__}: steering methods support UNet (SD, SDXL), SD3, Flux and PixArt "
        f"denoisers, not {name if transformer is not None else 'a pipeline without one'}"
    )


@dataclass(frozen=True)
class PromptBank:
    """Encoded prompts: ``hidden[i]`` (and SDXL's ``pooled[i]``) belong to ``prompts[i]``."""

    prompts: tuple[str, ...]
    hidden: torch.Tensor
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None
    text_ids: torch.Tensor | None = None
    #: PixArt: T5's attention mask, which the transformer's cross-attention takes.
    mask: torch.Tensor | None = None

    @classmethod
    def encode(cls, pipe: Any, prompts: Sequence[str], *, latent_size: int) -> PromptBank:
        """Encode the distinct ``prompts`` with ``pipe``'s text encoder(s), without grad."""
        unique = tuple(dict.fromkeys(prompts))
        family = denoiser_family(pipe)
        if family != "unet":
            return cls._transformer(pipe, unique, family)
        device = pipe.unet.device
        xl = getattr(pipe, "text_encoder_2", None) is not None
        with torch.no_grad():
            out = pipe.encode_prompt(
                prompt=list(unique),
                device=device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
        hidden = out[0].detach()
        pooled = out[2].detach() if xl else None
        time_ids = None
        if xl:
            if bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)) and "" in unique:
                empty = unique.index("")
                hidden[empty] = 0
                assert pooled is not None
                pooled[empty] = 0
            size = latent_size * int(getattr(pipe, "vae_scale_factor", 8))
            time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=hidden.dtype)
        return cls(prompts=unique, hidden=hidden, pooled=pooled, time_ids=time_ids)

    @classmethod
    def _transformer(cls, pipe: Any, unique: tuple[str, ...], family: str) -> PromptBank:
        device = pipe.transformer.device
        with torch.no_grad():
            if family == "pixart":
                hidden, mask, _, _ = pipe.encode_prompt(
                    list(unique), do_classifier_free_guidance=False, device=device,
                    clean_caption=False,
                )  # fmt: skip
                return cls(unique, hidden.detach(), None, None, None, mask.detach())
            if family == "sd3":
                out = pipe.encode_prompt(
                    prompt=list(unique), prompt_2=None, prompt_3=None, device=device,
                    num_images_per_prompt=1, do_classifier_free_guidance=False,
                )  # fmt: skip
                return cls(unique, out[0].detach(), out[2].detach(), None)
            length = min(512, int(pipe.tokenizer_2.model_max_length))
            hidden, pooled, text_ids = pipe.encode_prompt(
                prompt=list(unique), prompt_2=None, device=device, num_images_per_prompt=1,
                max_sequence_length=length,
            )  # fmt: skip
        return cls(unique, hidden.detach(), pooled.detach(), None, text_ids.detach())

    def index(self, prompts: Sequence[str]) -> torch.Tensor:
        """Row indices of ``prompts`` (each must have been encoded)."""
        where = {p: i for i, p in enumerate(self.prompts)}
        missing = [p for p in prompts if p not in where]
        if missing:
            raise KeyError(f"prompts {missing} were not encoded")
        return torch.tensor([where[p] for p in prompts], dtype=torch.long)

    def unet_kwargs(self, rows: torch.Tensor) -> dict[str, Any]:
        """``encoder_hidden_states`` (and SDXL's ``added_cond_kwargs``) for these rows."""
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.hidden[rows]}
        if self.pooled is not None and self.time_ids is not None:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": self.pooled[rows],
                "time_ids": self.time_ids.to(self.hidden.device).expand(len(rows), -1),
            }
        return kwargs


def unet_eps(pipe: Any, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """``pipe.unet``'s prediction for ``x`` at ``t`` (one or per row) under text ``states``."""
    steps = t.to(x.device).expand(len(x)) if t.dim() == 0 else t.to(x.device)
    return pipe.unet(x, steps, encoder_hidden_states=states.to(x)).sample  # type: ignore[no-any-return]
