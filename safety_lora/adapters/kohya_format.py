"""kohya/A1111 LoRA and LoCon: ``lora_unet_<module>.lora_down.weight``, ``lora_up``, ``alpha``.

The module's delta is ``up @ down * alpha / rank`` (a missing or zero alpha means rank).
Conv layers (LoCon) store ``lora_down`` as a ``k x k`` conv and ``lora_up`` as a 1x1 conv;
Tucker LoCon stores a 1x1 ``lora_down`` and a ``k x k`` core ``lora_mid``; DoRA adds the
magnitude ``dora_scale``. Module stems are diffusers names, or the LDM/SGM names of SDXL files.
The key helpers (:mod:`safety_lora.adapters.kohya_keys`) are shared with the LyCORIS format.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from safety_lora.adapters.base import FormatName
from safety_lora.adapters.kohya_keys import (
    UNET_PREFIXES,
    component_of,
    read_kohya_style,
    write_kohya_style,
)
from safety_lora.adapters.names import ModuleIndex
from safety_lora.adapters.state import (
    AdapterState,
    Component,
    Family,
)

__all__ = ["KohyaFormat"]


class KohyaFormat:
    """kohya/A1111 LoRA and LoCon files (what A1111, ComfyUI and sd-scripts read)."""

    name: FormatName = "kohya"
    families: tuple[Family, ...] = ("lora",)

    def matches(self, keys: Collection[str]) -> bool:
        """Any ``lora_unet_*.lora_down``/``lora_up`` key (or LyCORIS' ``lycoris_`` prefix)."""
        return any(
            k.startswith(UNET_PREFIXES) and (".lora_down." in k or ".lora_up." in k) for k in keys
        )

    def component_of(self, key: str) -> Component | None:
        """By the key's prefix (``lora_unet_``, ``lora_te_``/``lora_te1_``, ``lora_te2_``)."""
        return component_of(key)

    def read(
        self,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        index: ModuleIndex,
        component: Component = "unet",
    ) -> AdapterState:
        """Parse one component's part of a kohya state dict."""
        return read_kohya_style(tensors, metadata, index, component)

    def write(self, state: AdapterState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """kohya keys: ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
        return write_kohya_style(state, suffix_weight=True)
