"""The adapters package's base vocabulary: format names and the Protocol every file format
implements (the registry in :mod:`safety_lora.adapters.formats` holds the implementations,
and no format module imports the registry)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Literal, Protocol

import torch

from safety_lora.adapters.names import ModuleIndex
from safety_lora.adapters.state import AdapterState, Component, Family

__all__ = ["AdapterFormat", "FormatName"]

FormatName = Literal["peft", "kohya", "lycoris"]


class AdapterFormat(Protocol):
    """A file layout: which keys it recognises, how to read and write an :class:`AdapterState`."""

    name: FormatName
    families: tuple[Family, ...]

    def matches(self, keys: Collection[str]) -> bool:
        """Whether these state-dict keys are in this format."""
        ...

    def component_of(self, key: str) -> Component | None:
        """The pipeline component a key adapts (``None``: not a key of this format)."""
        ...

    def read(
        self,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        index: ModuleIndex,
        component: Component = "unet",
    ) -> AdapterState:
        """Parse one component's keys (module names resolved through ``index``)."""
        ...

    def write(self, state: AdapterState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The state dict and safetensors metadata for ``state`` (text-encoder parts too)."""
        ...
