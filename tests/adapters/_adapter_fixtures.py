"""Tiny UNets, fixed inputs and adapter files written by the LyCORIS package itself."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

from safety_lora.adapters import ModuleIndex
from safety_lora.adapters.ldm_names import ldm_stem
from safety_lora.adapters.names import kohya_stem
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


def kohya_stems(model: torch.nn.Module, *, ldm: bool = False) -> dict[str, tuple[int, ...]]:
    """Every Linear/Conv2d of ``model`` by kohya stem (LDM/SGM names with ``ldm``), with shape."""
    index = ModuleIndex.from_model(model)
    if not ldm:  # text encoders: sd-scripts' ``text_model_`` names, whatever transformers has
        clip = isinstance(model, CLIPTextModel)
        return {
            ("text_model_" if clip and not p.startswith("text_model.") else "") + kohya_stem(p): s
            for p, s in index.shapes.items()
        }
    assert index.layout is not None
    return {str(ldm_stem(p, index.layout)): s for p, s in index.shapes.items()}


def kohya_lora_file(
    path: Path, parts: Mapping[str, Mapping[str, tuple[int, ...]]], *, seed: int = 0
) -> Path:
    """A random rank-2 kohya LoRA/LoCon (alpha 1): ``parts`` maps a key prefix
    (``lora_unet_``, ``lora_te1_`` ...) to ``{stem: weight shape}``.
    """
    g = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, stems in parts.items():
        for stem, shape in stems.items():
            up_shape = (shape[0], 2, 1, 1) if len(shape) == 4 else (shape[0], 2)
            down = torch.randn((2, *shape[1:]), generator=g) * 0.2
            tensors[f"{prefix}{stem}.lora_down.weight"] = down
            tensors[f"{prefix}{stem}.lora_up.weight"] = torch.randn(up_shape, generator=g) * 0.2
            tensors[f"{prefix}{stem}.alpha"] = torch.tensor(1.0)
    save_file(tensors, str(path))
    return path
