"""Module names and weight shapes of a UNet, and the kohya name -> module path map.

kohya/LyCORIS keys replace every dot of the module path with ``_`` (``attn2_to_out_0``), which
cannot be undone by string rules alone, so the map is built from a model's actual modules:
the UNet being loaded into, or (for ``inspect``/``convert`` without one) the standard SD 1.x/2.x
and SDXL UNet layouts instantiated on the meta device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import torch

from safety_lora.adapters.ldm_names import UnetLayout, ldm_stem
from safety_lora.adapters.state import Denoiser

__all__ = [
    "SD15_UNET",
    "SDXL_LAYOUT",
    "SDXL_UNET",
    "ModuleIndex",
    "config_index",
    "config_unet",
    "denoiser_part",
    "kohya_stem",
    "reference_index",
    "reference_text_index",
    "reference_transformer_index",
]


def denoiser_part(pipe: Any) -> Denoiser:
    """Which attribute of ``pipe`` holds its denoiser: ``unet``, else ``transformer``
    (SD3, Flux, PixArt); pipelines with neither get ``transformer`` (and fail where it is used).
    """
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def kohya_stem(path: str) -> str:
    """``down_blocks.1.attentions.0.proj_in`` -> ``down_blocks_1_attentions_0_proj_in``."""
    return path.replace(".", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """Adaptable modules (Linear / Conv2d) by diffusers path, with their weight shapes.

    ``layout`` is the model's block structure when the model is a known UNet (it resolves and
    writes LDM names); ``None`` for the reference index and for other models. ``denoiser``
    names the pipeline attribute a denoiser model sits on (``transformer`` for SD3/Flux/PixArt).
    """

    shapes: Mapping[str, tuple[int, ...]]
    layout: UnetLayout | None = field(default=None)
    denoiser: Denoiser = "unet"

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> ModuleIndex:
        """Index every ``nn.Linear``/``nn.Conv2d`` of ``model`` (peft wrappers see through)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and name:
                # peft wraps layers: ``x.to_k.base_layer`` is the original ``x.to_k``.
                clean = name.replace(".base_layer", "")
                if ".lora_" in clean or ".lokr_" in clean or ".hada_" in clean:
                    continue
                shapes[clean] = tuple(module.weight.shape)
        config = getattr(model, "config", None)
        layout = UnetLayout.from_config(config) if isinstance(config, Mapping) else None
        denoiser: Denoiser = "transformer" if "Transformer" in type(model).__name__ else "unet"
        return cls(shapes, layout, denoiser)

    @cached_property
    def by_stem(self) -> dict[str, str]:
        """kohya stem -> module path (ambiguous stems are left out)."""
        out: dict[str, str] = {}
        seen: set[str] = set()
        for path in self.shapes:
            stem = kohya_stem(path)
            if stem in out:
                seen.add(stem)
            out[stem] = path
        for stem in seen:
            del out[stem]
        return out

    @cached_property
    def by_ldm_stem(self) -> dict[str, str]:
        """LDM/SGM kohya stem -> module path, under this UNet's layout (SDXL's when unknown)."""
        layout = self.layout or SDXL_LAYOUT
        out: dict[str, str] = {}
        for path in self.shapes:
            stem = ldm_stem(path, layout)
            if stem is not None:
                out.setdefault(stem, path)
        return out

    def resolve(self, stem: str, *, key: str) -> str:
        """The module path for a kohya stem (diffusers or LDM names); ``KeyError(key)`` if none."""
        for candidate in _text_model_aliases(stem, "_"):
            path = self.by_stem.get(candidate) or self.by_ldm_stem.get(candidate)
            if path is not None:
                return path
        raise KeyError(key)

    def find(self, path: str) -> str | None:
        """``path`` as this model names it (``text_model.`` added or dropped), or ``None``."""
        return next((p for p in _text_model_aliases(path, ".") if p in self.shapes), None)


def _text_model_aliases(name: str, sep: str) -> tuple[str, ...]:
    """``name``, and without or with CLIP's ``text_model`` prefix: kohya/diffusers files keep
    it, while transformers 5 flattens ``CLIPTextModel`` (``encoder.layers.0...``).
    """
    prefix = f"text_model{sep}"
    if name.startswith(prefix):
        return name, name[len(prefix) :]
    return name, prefix + name


#: The SD 1.x/2.x UNet config (its published config's block structure and widths).
SD15_UNET: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "layers_per_block": 2,
}
#: The SDXL base UNet config.
SDXL_UNET: dict[str, Any] = {
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "layers_per_block": 2,
}


#: The SDXL layout, for LDM-named files read without a base UNet.
SDXL_LAYOUT: UnetLayout = UnetLayout.sdxl_base()


def config_unet(folder: str | Path) -> torch.nn.Module:
    """The UNet a diffusers ``config.json`` describes, on the meta device (shapes, no weights).

    ``folder`` is a UNet folder or a pipeline folder with a ``unet/`` subfolder.
    """
    from diffusers import UNet2DConditionModel

    folder = Path(folder)
    if (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    config = UNet2DConditionModel.load_config(str(folder))
    with torch.device("meta"):
        unet: torch.nn.Module = UNet2DConditionModel.from_config(config)
    return unet


def config_index(folder: str | Path) -> ModuleIndex:
    """The index of the UNet described by a diffusers ``config.json`` (meta device, no weights)."""
    return ModuleIndex.from_model(config_unet(folder))


@cache
def reference_index() -> ModuleIndex:
    """Module names of the SD 1.x/2.x and SDXL UNets (built on the meta device, no weights).

    Where both layouts have a module, the SD 1.x shape is kept; shapes here only serve
    approximate conversion of conv layers when no base UNet is given.
    """
    from diffusers import UNet2DConditionModel

    shapes: dict[str, tuple[int, ...]] = {}
    for config in (SDXL_UNET, SD15_UNET):
        with torch.device("meta"):
            unet = UNet2DConditionModel(**config)
        shapes.update(ModuleIndex.from_model(unet).shapes)
    return ModuleIndex(shapes)


#: SD 3.5 Large's and Flux.1-dev's transformer configs (the published ``config.json`` values).
SD3_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38,
    "attention_head_dim": 64, "num_attention_heads": 38, "joint_attention_dim": 4096,
    "caption_projection_dim": 2432, "pooled_projection_dim": 2048, "out_channels": 16,
    "pos_embed_max_size": 192, "qk_norm": "rms_norm",
}  # fmt: skip
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
    "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
    "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}  # fmt: skip


@cache
def reference_transformer_index() -> ModuleIndex:
    """Module names of the SD3 and Flux transformers (built on the meta device, no weights),
    for transformer files read without a model; where both have a module, Flux's shape is kept.
    """
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    shapes: dict[str, tuple[int, ...]] = {}
    for cls, config in ((SD3Transformer2DModel, SD3_TRANSFORMER),
                        (FluxTransformer2DModel, FLUX_TRANSFORMER)):  # fmt: skip
        with torch.device("meta"):
            model = cls(**config)
        shapes.update(ModuleIndex.from_model(model).shapes)
    return ModuleIndex(shapes, denoiser="transformer")


@cache
def reference_text_index() -> ModuleIndex:
    """Module names of the CLIP text encoders of SD 1.x/2.x and SDXL (up to 32 layers and the
    projection, on the meta device); shapes are placeholders (text encoders have no convs).
    """
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=8, intermediate_size=8, num_attention_heads=1, num_hidden_layers=32
    )
    with torch.device("meta"):
        model = CLIPTextModelWithProjection(config)
    return ModuleIndex.from_model(model)
