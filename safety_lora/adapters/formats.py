"""The format registry: detect a file's format, read it into an :class:`AdapterState`, write one.

Each format lives in its own module and plugs in through the small :class:`AdapterFormat`
protocol. Files are safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Literal, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from safety_lora.adapters.kohya_format import KohyaFormat
from safety_lora.adapters.lycoris_format import LycorisFormat
from safety_lora.adapters.names import ModuleIndex, reference_index
from safety_lora.adapters.peft_format import PeftFormat
from safety_lora.adapters.state import AdapterFormatError, AdapterState, Family

__all__ = [
    "FORMATS",
    "AdapterFormat",
    "FormatName",
    "detect_format",
    "read_adapter",
    "read_safetensors",
    "write_adapter",
]

FormatName = Literal["peft", "kohya", "lycoris"]


class AdapterFormat(Protocol):
    """A file layout: which keys it recognises, how to read and write an :class:`AdapterState`."""

    name: FormatName
    families: tuple[Family, ...]

    def matches(self, keys: Collection[str]) -> bool:
        """Whether these state-dict keys are in this format."""
        ...

    def read(
        self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], index: ModuleIndex
    ) -> AdapterState:
        """Parse a state dict (module names resolved through ``index``)."""
        ...

    def write(self, state: AdapterState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The state dict and safetensors metadata for ``state``."""
        ...


#: Formats by name, in detection order.
FORMATS: dict[FormatName, AdapterFormat] = {
    "peft": PeftFormat(),
    "lycoris": LycorisFormat(),
    "kohya": KohyaFormat(),
}


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFormatError(f"{str(path)!r}: file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:  # type: ignore[no-untyped-call]
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise AdapterFormatError(
            f"{str(path)!r}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e
    return tensors, metadata


def detect_format(
    source: str | Path | Mapping[str, torch.Tensor], *, name: str | None = None
) -> FormatName:
    """The format of a file or state dict; a clear error naming it and a few keys if unknown."""
    if isinstance(source, str | Path):
        tensors: Mapping[str, torch.Tensor] = read_safetensors(source)[0]
        name = name or str(source)
    else:
        tensors = source
    keys = list(tensors)
    for fmt in FORMATS.values():
        if fmt.matches(keys):
            return fmt.name
    sample = ", ".join(sorted(keys)[:5]) or "(no tensors)"
    raise AdapterFormatError(
        f"{(name or 'state dict')!r}: unknown adapter format (expected diffusers/PEFT "
        f"'lora_A'/'lora_B', kohya 'lora_unet_*.lora_down', or LyCORIS 'hada_*'/'lokr_*'/'diff'"
        f" keys); sample keys: {sample}"
    )


def read_adapter(
    path: str | Path, *, unet: torch.nn.Module | ModuleIndex | None = None
) -> tuple[AdapterState, FormatName]:
    """Read any supported file; names resolve against ``unet`` (or the SD/SDXL layouts)."""
    tensors, metadata = read_safetensors(path)
    fmt = FORMATS[detect_format(tensors, name=str(path))]
    if isinstance(unet, ModuleIndex):
        index = unet
    else:
        index = ModuleIndex.from_model(unet) if unet is not None else reference_index()
    try:
        state = fmt.read(tensors, metadata, index)
    except AdapterFormatError as e:
        raise AdapterFormatError(f"{str(path)!r}: {e}") from e
    return state, fmt.name


def write_adapter(state: AdapterState, path: str | Path, *, to: FormatName) -> Path:
    """Write ``state`` to ``path`` (``.safetensors``) in format ``to``."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise AdapterFormatError(f"{str(path)!r}: adapters are written as .safetensors only")
    if to not in FORMATS:
        raise AdapterFormatError(f"unknown target format {to!r}; known: {sorted(FORMATS)}")
    fmt = FORMATS[to]
    if state.family not in fmt.families:
        raise AdapterFormatError(
            f"the {to} format cannot hold a {state.family} adapter (it holds {fmt.families})"
        )
    tensors, metadata = fmt.write(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path
