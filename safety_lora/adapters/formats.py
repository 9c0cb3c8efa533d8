"""The format registry: detect a file's format, read it into an :class:`AdapterState`, write one.

Each format lives in its own module and plugs in through the small :class:`AdapterFormat`
protocol. Files are safetensors only; nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file

from safety_lora.adapters.base import AdapterFormat, FormatName
from safety_lora.adapters.kohya_format import KohyaFormat
from safety_lora.adapters.lycoris_format import LycorisFormat
from safety_lora.adapters.names import (
    ModuleIndex,
    reference_index,
    reference_text_index,
    reference_transformer_index,
)
from safety_lora.adapters.peft_format import PeftFormat
from safety_lora.adapters.state import AdapterFormatError, AdapterState, Component

__all__ = [
    "FORMATS",
    "AdapterFormat",
    "FormatName",
    "detect_format",
    "parse_safetensors",
    "read_adapter",
    "read_bytes",
    "read_safetensors",
    "write_adapter",
]

#: Formats by name, in detection order.
FORMATS: dict[FormatName, AdapterFormat] = {
    "peft": PeftFormat(),
    "lycoris": LycorisFormat(),
    "kohya": KohyaFormat(),
}


def read_bytes(path: str | Path) -> bytes:
    """The whole file, read once (callers hash and parse the same bytes)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFormatError(f"{str(path)!r}: file not found")
    try:
        return path.read_bytes()
    except OSError as e:
        raise AdapterFormatError(f"{str(path)!r}: cannot read: {e.strerror or e}") from e


def parse_safetensors(data: bytes, *, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of safetensors ``data``; a clear error for anything else."""
    try:
        (size,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + size])
        metadata = header.get("__metadata__") or {}
        if not isinstance(metadata, dict):
            raise ValueError("__metadata__ is not a mapping")
        loaded = load(data)
    except (SafetensorError, struct.error, ValueError, RuntimeError, AttributeError) as e:
        raise AdapterFormatError(
            f"{name!r}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from e
    # safetensors hands back a hash map: sort, so modules (and errors) come in one order
    tensors = {key: loaded[key] for key in sorted(loaded)}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a clear error for anything else."""
    return parse_safetensors(read_bytes(path), name=str(path))


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
    path: str | Path,
    *,
    unet: torch.nn.Module | ModuleIndex | None = None,
    data: bytes | None = None,
    text_encoders: Mapping[str, torch.nn.Module | ModuleIndex] | None = None,
) -> tuple[AdapterState, FormatName]:
    """Read any supported file; names resolve against ``unet`` (or the SD/SDXL layouts) and
    text-encoder parts against ``text_encoders`` by component (or the CLIP text layouts).

    ``data``: the file's bytes when the caller has read (and verified) them already.
    """
    tensors, metadata = (
        read_safetensors(path) if data is None else parse_safetensors(data, name=str(path))
    )
    fmt = FORMATS[detect_format(tensors, name=str(path))]
    parts: dict[Component, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():  # unknown keys go to the UNet part, which names them
        parts.setdefault(fmt.component_of(key) or "unet", {})[key] = tensor
    try:
        if "unet" not in parts:
            raise AdapterFormatError(
                f"no UNet keys, only text-encoder parts {sorted(parts)}; a steering adapter "
                f"adapts the UNet"
            )
        denoiser = parts.pop("unet")
        reference = reference_transformer_index if _transformer_keys(denoiser) else reference_index
        state = fmt.read(denoiser, metadata, _index(unet, reference))
        given = text_encoders or {}
        text = {
            component: fmt.read(
                part, metadata, _index(given.get(component), reference_text_index), component
            )
            for component, part in parts.items()
        }
        if text:
            state = dataclasses.replace(state, text_encoders=text)
    except AdapterFormatError as e:
        raise AdapterFormatError(f"{str(path)!r}: {e}") from e
    return state, fmt.name


#: Key starts that name a transformer denoiser's modules (PEFT files; LyCORIS' own names).
_TRANSFORMER_KEYS = (
    "transformer.",
    "lycoris_transformer_blocks_",
    "lycoris_single_transformer_blocks_",
    "lycoris_context_embedder",
)


def _transformer_keys(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether a denoiser part is for a transformer (SD3, Flux): read without a model, its
    names resolve against those models' layouts instead of the UNets'.
    """
    return any(k.startswith(_TRANSFORMER_KEYS) for k in tensors)


def _index(
    model: torch.nn.Module | ModuleIndex | None, reference: Callable[[], ModuleIndex]
) -> ModuleIndex:
    if isinstance(model, ModuleIndex):
        return model
    return ModuleIndex.from_model(model) if model is not None else reference()


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
