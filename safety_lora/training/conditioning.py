"""Prompt conditioning for the UNet, encoded once: SD (one text encoder) and SDXL.

The text encoders are frozen during ESD training, so every prompt the run uses is encoded
once up front and rows are gathered per step. SDXL adds the pooled embedding of the second
encoder and ``add_time_ids`` (original size, crop (0, 0), target size = the latent size
times the VAE scale); its empty prompt is all zeros when the pipeline's
``force_zeros_for_empty_prompt`` is set, as the SDXL pipeline's unconditional branch is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PromptBank"]


@dataclass(frozen=True)
class PromptBank:
    """Encoded prompts: ``hidden[i]`` (and SDXL's ``pooled[i]``) belong to ``prompts[i]``."""

    prompts: tuple[str, ...]
    hidden: torch.Tensor
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None

    @classmethod
    def encode(cls, pipe: Any, prompts: Sequence[str], *, latent_size: int) -> PromptBank:
        """Encode the distinct ``prompts`` with ``pipe``'s text encoder(s), without grad."""
        unique = tuple(dict.fromkeys(prompts))
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
