"""Steering-adapter files: read, write, convert, verify and load LoRA, LoHa, LoKr and full.

Formats: diffusers/PEFT LoRA, kohya/A1111 LoRA/LoCon, LyCORIS LoHa/LoKr/full. Everything goes
through one in-memory :class:`AdapterState`; :func:`load_adapter` puts any of them on a UNet
as a peft adapter, so diffusers' strength/fuse/disable API works for all.
"""

from safety_lora.adapters.convert import ConversionReport, convert
from safety_lora.adapters.formats import (
    FORMATS,
    AdapterFormat,
    FormatName,
    detect_format,
    read_adapter,
    write_adapter,
)
from safety_lora.adapters.loading import AdapterInfo, check_fits, load_adapter, load_state
from safety_lora.adapters.names import ModuleIndex
from safety_lora.adapters.state import (
    FAMILIES,
    AdapterFormatError,
    AdapterIntegrityError,
    AdapterState,
    Family,
    ModuleWeights,
)

__all__ = [
    "FAMILIES",
    "FORMATS",
    "AdapterFormat",
    "AdapterFormatError",
    "AdapterInfo",
    "AdapterIntegrityError",
    "AdapterState",
    "ConversionReport",
    "Family",
    "FormatName",
    "ModuleIndex",
    "ModuleWeights",
    "check_fits",
    "convert",
    "detect_format",
    "load_adapter",
    "load_state",
    "read_adapter",
    "write_adapter",
]
