"""kohya/A1111 LoRA and LoCon: ``lora_unet_<module>.lora_down.weight``, ``lora_up``, ``alpha``.

The module's delta is ``up @ down * alpha / rank`` (a missing or zero alpha means rank).
Conv layers (LoCon) store ``lora_down`` as a ``k x k`` conv and ``lora_up`` as a 1x1 conv;
Tucker LoCon stores a 1x1 ``lora_down`` and a ``k x k`` core ``lora_mid``; DoRA adds the
magnitude ``dora_scale``. Module stems are diffusers names, or the LDM/SGM names of SDXL files.
The key helpers here are shared with the LyCORIS format, which uses the same naming.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING

import torch

from safety_lora.adapters.ldm_names import ldm_stem
from safety_lora.adapters.names import SDXL_LAYOUT, ModuleIndex, kohya_stem
from safety_lora.adapters.state import AdapterFormatError, AdapterState, Family, ModuleWeights

if TYPE_CHECKING:
    from safety_lora.adapters.formats import FormatName

__all__ = ["KohyaFormat", "read_kohya_style", "write_kohya_style"]

#: UNet key prefixes: kohya/A1111, and LyCORIS' own default.
UNET_PREFIXES = ("lora_unet_", "lycoris_")
_TEXT_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_")
_META_DROP = ("format",)


def _family_of(names: Collection[str]) -> Family | None:
    if any(n.startswith("lora_") for n in names):
        return "lora"
    if any(n.startswith("hada_") for n in names):
        return "loha"
    if any(n.startswith("lokr_") for n in names):
        return "lokr"
    if "diff" in names or "diff_b" in names:
        return "full"
    return None


def read_kohya_style(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], index: ModuleIndex
) -> AdapterState:
    """Group ``<prefix><stem>.<name>`` keys per module, resolve stems, build the state."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    first_key: dict[str, str] = {}
    for key, tensor in tensors.items():
        if key.startswith(_TEXT_PREFIXES):
            raise AdapterFormatError(
                f"key {key!r}: text-encoder adapters are not supported (safety steering "
                f"adapts the UNet only); remove the lora_te* keys"
            )
        prefix = next((p for p in UNET_PREFIXES if key.startswith(p)), None)
        if prefix is None or "." not in key:
            raise AdapterFormatError(
                f"key {key!r}: expected '<{'|'.join(UNET_PREFIXES)}><module>.<tensor>'"
            )
        stem, name = key[len(prefix) :].split(".", 1)
        name = name.removesuffix(".weight")
        groups.setdefault(stem, {})[name] = tensor
        first_key.setdefault(stem, key)

    family: Family | None = None
    family_key = ""
    modules: dict[str, ModuleWeights] = {}
    ldm = False
    for stem, group in groups.items():
        key = first_key[stem]
        unsupported = sorted(set(group) & {"scalar", "bias"})
        if unsupported:
            raise AdapterFormatError(
                f"key {key!r}: {unsupported} (scalar / bias variants) are not supported"
            )
        alpha_t = group.pop("alpha", None)
        fam = _family_of(group)
        if fam not in (None, "lora") and "dora_scale" in group:
            raise AdapterFormatError(
                f"key {key!r}: DoRA on {fam} (LyCORIS dora_wd) is not supported; peft applies "
                f"DoRA to LoRA only"
            )
        if fam is None:
            raise AdapterFormatError(
                f"key {key!r}: module {stem!r} has no weights, only {sorted(group)}"
            )
        if family is None:
            family, family_key = fam, key
        elif fam != family:
            raise AdapterFormatError(
                f"mixed adapter families in one file ({family} at {family_key!r}, {fam} at "
                f"{key!r}) are not supported"
            )
        try:
            path = index.resolve(stem, key=key)
        except KeyError:
            raise AdapterFormatError(
                f"key {key!r}: no UNet module is named {stem!r} (with '.' for '_', in diffusers "
                f"or LDM/SGM names); the adapter does not fit this UNet"
            ) from None
        ldm = ldm or stem not in index.by_stem
        alpha = None if alpha_t is None else float(alpha_t.float().item())
        modules[path] = ModuleWeights(group, alpha)
    if family is None:
        raise AdapterFormatError("no UNet adapter keys")
    meta = {k: v for k, v in metadata.items() if k not in _META_DROP}
    shapes = {p: index.shapes[p] for p in modules}
    layout = index.layout or (SDXL_LAYOUT if ldm else None)
    return AdapterState(family, modules, meta, shapes, layout)


def write_kohya_style(
    state: AdapterState, *, suffix_weight: bool
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``lora_unet_<stem>.<name>[.weight]`` keys plus ``alpha`` (in the module's dtype).

    Stems are LDM/SGM names for an SDXL layout (what sd-scripts writes), else diffusers names.
    """
    out: dict[str, torch.Tensor] = {}
    layout = state.layout if state.layout is not None and state.layout.sdxl else None
    for path, weights in state.modules.items():
        stem = kohya_stem(path) if layout is None else ldm_stem(path, layout)
        if stem is None:
            raise AdapterFormatError(f"module {path!r} has no LDM/SGM name in an SDXL UNet")
        base = f"lora_unet_{stem}"
        dtype = next(iter(weights.tensors.values())).dtype
        for name, tensor in weights.tensors.items():
            suffix = ".weight" if suffix_weight and name != "dora_scale" else ""
            out[f"{base}.{name}{suffix}"] = tensor
        if weights.alpha is not None:
            out[f"{base}.alpha"] = torch.tensor(weights.alpha, dtype=dtype)
    return out, {**state.metadata, "format": "pt"}


class KohyaFormat:
    """kohya/A1111 LoRA and LoCon files (what A1111, ComfyUI and sd-scripts read)."""

    name: FormatName = "kohya"
    families: tuple[Family, ...] = ("lora",)

    def matches(self, keys: Collection[str]) -> bool:
        """Any ``lora_unet_*.lora_down``/``lora_up`` key (or LyCORIS' ``lycoris_`` prefix)."""
        return any(
            k.startswith(UNET_PREFIXES) and (".lora_down." in k or ".lora_up." in k) for k in keys
        )

    def read(
        self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], index: ModuleIndex
    ) -> AdapterState:
        """Parse a kohya state dict."""
        return read_kohya_style(tensors, metadata, index)

    def write(self, state: AdapterState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """kohya keys: ``.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
        return write_kohya_style(state, suffix_weight=True)
