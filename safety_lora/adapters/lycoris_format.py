"""LyCORIS factorised adapters: LoHa (``hada_*``), LoKr (``lokr_*``) and full (``diff``/``diff_b``).

Keys are kohya-style (``lora_unet_<module with _>.<tensor>``, no ``.weight`` suffix) with an
``alpha`` per module. LoHa's delta is ``(w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank`` (Tucker
cores ``hada_t1``/``hada_t2`` for conv); LoKr's is ``kron(w1, w2) * alpha / rank`` with either
factor optionally low-rank (``_a @ _b``) and scale 1 when neither is; full's is ``diff``.
LoRA/LoCon state written by LyCORIS is kohya's layout and is written that way here too.
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
from safety_lora.adapters.state import AdapterState, Component, Family

__all__ = ["LycorisFormat"]

_MARKERS = (".hada_", ".lokr_", ".diff")


class LycorisFormat:
    """LyCORIS LoHa/LoKr/full files (and LoCon, in kohya's layout)."""

    name: FormatName = "lycoris"
    families: tuple[Family, ...] = ("loha", "lokr", "full", "lora")

    def matches(self, keys: Collection[str]) -> bool:
        """Any ``lora_unet_*`` (or ``lycoris_*``) key with a ``hada_``/``lokr_``/``diff`` tensor."""
        return any(k.startswith(UNET_PREFIXES) and any(m in k for m in _MARKERS) for k in keys)

    def component_of(self, key: str) -> Component | None:
        """By the key's prefix, as kohya's."""
        return component_of(key)

    def read(
        self,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        index: ModuleIndex,
        component: Component = "unet",
    ) -> AdapterState:
        """Parse one component's part of a LyCORIS state dict."""
        return read_kohya_style(tensors, metadata, index, component)

    def write(self, state: AdapterState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """LyCORIS keys (``.weight`` only on LoCon's ``lora_down``/``lora_up``)."""
        return write_kohya_style(state, suffix_weight=state.family == "lora", lycoris=True)
