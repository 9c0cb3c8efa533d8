"""Tiny UNets, fixed inputs and adapter files written by the LyCORIS package itself."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from safety_lora.testing import tiny_pipeline

#: One row per LyCORIS family/variant: (id, create_lycoris kwargs).
LYCORIS_ROWS: list[tuple[str, dict[str, Any]]] = [
    ("loha", {"algo": "loha"}),
    ("loha-tucker", {"algo": "loha", "use_tucker": True}),
    ("lokr", {"algo": "lokr"}),
    ("lokr-decompose-both", {"algo": "lokr", "decompose_both": True}),
    ("lokr-tucker", {"algo": "lokr", "use_tucker": True}),
    ("full", {"algo": "full"}),
    ("locon", {"algo": "locon"}),
    ("locon-tucker", {"algo": "locon", "use_tucker": True}),
    ("locon-dora", {"algo": "locon", "dora_wd": True}),
]

_BASE: UNet2DConditionModel | None = None


def base_unet() -> UNet2DConditionModel:
    """A fresh copy of one tiny random SD UNet (16/32 channels, cross-attention dim 32)."""
    global _BASE
    if _BASE is None:
        _BASE = tiny_pipeline("sd").unet.eval()
    return copy.deepcopy(_BASE)


def unet_out(unet: torch.nn.Module) -> torch.Tensor:
    """The UNet's output for fixed inputs."""
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        out: torch.Tensor = unet(sample, torch.tensor([10, 500]), encoder_hidden_states=text).sample
    return out


def lycoris_file(path: Path, kwargs: dict[str, Any], *, seed: int = 1) -> tuple[Path, Any, Any]:
    """Create a LyCORIS network on a copy of the base UNet, randomise it, save it.

    Returns the file, the UNet with LyCORIS applied, and the network (its ``loras`` take
    a ``multiplier``).
    """
    from lycoris import create_lycoris

    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    unet = base_unet()
    net = create_lycoris(unet, 1.0, linear_dim=4, linear_alpha=2.0, **kwargs)
    net.apply_to()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if kwargs["algo"] == "full":  # parameters are base weights plus the diff
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    net.save_weights(str(path), None, {"ss_sd_model_hash": "tiny-sd"})
    return path, unet, net
