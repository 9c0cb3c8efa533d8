"""kohya-style keys, shared by the kohya and LyCORIS formats (same naming, other tensors):
``<prefix><module stem>.<tensor>[.weight]`` with a per-component prefix, module stems being
diffusers names or the LDM/SGM names of SDXL files; reading such a state dict into an
:class:`AdapterState` and writing one back.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from safety_lora.adapters.ldm_names import ldm_stem
from safety_lora.adapters.names import SDXL_LAYOUT, ModuleIndex, kohya_stem
from safety_lora.adapters.state import (
    AdapterFormatError,
    AdapterState,
    Component,
    Family,
    ModuleWeights,
)

__all__ = ["PREFIXES", "UNET_PREFIXES", "component_of", "read_kohya_style", "write_kohya_style"]

#: UNet key prefixes: kohya/A1111, and LyCORIS' own default.
UNET_PREFIXES = ("lora_unet_", "lycoris_")
#: Key prefixes per pipeline component (SD 1.x files use ``lora_te_``, SDXL ``lora_te1_/2_``).
PREFIXES: dict[Component, tuple[str, ...]] = {
    "unet": UNET_PREFIXES,
    "text_encoder": ("lora_te_", "lora_te1_"),
    "text_encoder_2": ("lora_te2_",),
}
_META_DROP = ("format",)


def component_of(key: str) -> Component | None:
    """The component a kohya/LyCORIS key adapts, by its prefix."""
    return next((c for c, prefixes in PREFIXES.items() if key.startswith(prefixes)), None)


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
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    index: ModuleIndex,
    component: Component = "unet",
) -> AdapterState:
    """Group one component's ``<prefix><stem>.<name>`` keys per module, resolve stems, build
    the state.
    """
    groups: dict[str, dict[str, torch.Tensor]] = {}
    first_key: dict[str, str] = {}
    prefixes = PREFIXES[component]
    for key, tensor in tensors.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None or "." not in key:
            known = "|".join(p for ps in PREFIXES.values() for p in ps)
            raise AdapterFormatError(f"key {key!r}: expected '<{known}><module>.<tensor>'")
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
            model, names = (
                ("UNet", "in diffusers or LDM/SGM names")
                if component == "unet"
                else (component, "")
            )
            raise AdapterFormatError(
                f"key {key!r}: no {model} module is named {stem!r} (with '.' for '_'"
                f"{', ' + names if names else ''}); the adapter does not fit this {model}"
            ) from None
        ldm = ldm or stem not in index.by_stem
        alpha = None if alpha_t is None else float(alpha_t.float().item())
        modules[path] = ModuleWeights(group, alpha)
    if family is None:
        raise AdapterFormatError(f"no {component} adapter keys")
    meta = {k: v for k, v in metadata.items() if k not in _META_DROP}
    shapes = {p: index.shapes[p] for p in modules}
    layout = index.layout or (SDXL_LAYOUT if ldm else None)
    return AdapterState(family, modules, meta, shapes, layout, denoiser=index.denoiser)


def write_kohya_style(
    state: AdapterState, *, suffix_weight: bool, lycoris: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``lora_unet_<stem>.<name>[.weight]`` keys plus ``alpha`` (in the module's dtype).

    Stems are LDM/SGM names for an SDXL layout (what sd-scripts writes), else diffusers names;
    text-encoder parts are ``lora_te_`` (one text encoder) or ``lora_te1_``/``lora_te2_``.
    A transformer denoiser's modules (``lycoris`` only) are ``lycoris_<diffusers name>``, the
    keys LyCORIS writes when it wraps a diffusers transformer (as SimpleTuner does).
    """
    if state.denoiser != "unet" and not lycoris:
        raise AdapterFormatError(
            f"a {state.denoiser} adapter has no kohya names here (kohya's SD3/Flux files use "
            f"the original model's block names); write it as peft or lycoris"
        )
    out: dict[str, torch.Tensor] = {}
    layout = state.layout if state.layout is not None and state.layout.sdxl else None
    for path, weights in state.modules.items():
        if state.denoiser != "unet":
            _write_module(out, f"lycoris_{kohya_stem(path)}", weights, suffix_weight)
            continue
        stem = kohya_stem(path) if layout is None else ldm_stem(path, layout)
        if stem is None:
            raise AdapterFormatError(f"module {path!r} has no LDM/SGM name in an SDXL UNet")
        _write_module(out, f"lora_unet_{stem}", weights, suffix_weight)
    two = layout is not None or "text_encoder_2" in state.text_encoders
    for component, part in state.text_encoders.items():
        prefix = PREFIXES[component][1 if two and component == "text_encoder" else 0]
        for path, weights in part.modules.items():
            if path.startswith(("encoder.", "embeddings.", "final_layer_norm")):
                path = f"text_model.{path}"  # sd-scripts' names for a flattened CLIPTextModel
            _write_module(out, f"{prefix}{kohya_stem(path)}", weights, suffix_weight)
    return out, {**state.metadata, "format": "pt"}


def _write_module(
    out: dict[str, torch.Tensor], base: str, weights: ModuleWeights, suffix_weight: bool
) -> None:
    """One module's keys (``dora_scale`` and ``alpha`` never take ``.weight``)."""
    dtype = next(iter(weights.tensors.values())).dtype
    for name, tensor in weights.tensors.items():
        suffix = ".weight" if suffix_weight and name != "dora_scale" else ""
        out[f"{base}.{name}{suffix}"] = tensor
    if weights.alpha is not None:
        out[f"{base}.alpha"] = torch.tensor(weights.alpha, dtype=dtype)
