"""diffusers/PEFT LoRA: ``unet.<module>.lora_A.weight``/``lora_B.weight``, alpha in metadata.

diffusers (0.42) keeps the adapter's ``LoraConfig`` as JSON in the safetensors header under
``lora_adapter_metadata`` (keys prefixed ``unet.``: ``r``, ``lora_alpha``, ``rank_pattern``,
``alpha_pattern``, ``target_modules``); without it a file reloads with alpha = rank. Files
written here carry that header, so diffusers' own ``load_lora_weights`` keeps every alpha.
DoRA files add ``lora_magnitude_vector`` per module (``use_dora`` in the header); they map to
kohya/LyCORIS' ``dora_scale`` (per output channel, shaped ``(out, 1, ...)``).
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Collection, Mapping
from typing import Any

import torch

from safety_lora.adapters.base import FormatName
from safety_lora.adapters.names import ModuleIndex
from safety_lora.adapters.state import (
    AdapterFormatError,
    AdapterState,
    Component,
    Family,
    ModuleWeights,
    lora_down,
)

__all__ = ["METADATA_KEY", "PeftFormat", "lora_config_kwargs", "peft_lora_tensors"]

#: The safetensors header entry diffusers stores the LoraConfig in.
METADATA_KEY = "lora_adapter_metadata"
#: Key prefixes per pipeline component (the denoiser: ``unet.`` or ``transformer.``;
#: ``base_model.model.``: a bare peft UNet file).
_PREFIXES: dict[Component, tuple[str, ...]] = {
    "unet": ("unet.", "transformer.", "base_model.model."),
    "text_encoder": ("text_encoder.",),
    "text_encoder_2": ("text_encoder_2.",),
}
_NAMES = {
    "lora_A.weight": "lora_down",
    "lora_B.weight": "lora_up",
    "lora_magnitude_vector": "dora_scale",
}


def _config(metadata: Mapping[str, str], component: Component) -> dict[str, Any]:
    """The component's ``LoraConfig`` from the header (diffusers prefixes keys by component)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AdapterFormatError(f"metadata {METADATA_KEY!r} is not valid JSON: {e}") from e
    if not isinstance(packed, dict):
        raise AdapterFormatError(f"metadata {METADATA_KEY!r} is not a JSON object")
    prefixes = tuple(f"{c}." for c in _PREFIXES)
    if any(k.startswith(prefixes) for k in packed):
        mine = f"{component}."
        return {k.removeprefix(mine): v for k, v in packed.items() if k.startswith(mine)}
    return packed


def _pattern_value(patterns: Mapping[str, Any], path: str) -> Any:
    """peft's rule: a pattern matches a module path it equals or is a dotted suffix of."""
    if path in patterns:
        return patterns[path]
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            return value
    return None


class PeftFormat:
    """diffusers/PEFT LoRA files (``save_lora_weights`` / ``load_lora_weights``)."""

    name: FormatName = "peft"
    families: tuple[Family, ...] = ("lora",)

    def matches(self, keys: Collection[str]) -> bool:
        """Any ``.lora_A.``/``.lora_B.`` key."""
        return any(".lora_A." in k or ".lora_B." in k for k in keys)

    def component_of(self, key: str) -> Component | None:
        """By the key's prefix (``unet.``, ``text_encoder.``, ``text_encoder_2.``)."""
        return next((c for c, ps in _PREFIXES.items() if key.startswith(ps)), None)

    def read(
        self,
        tensors: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        index: ModuleIndex,
        component: Component = "unet",
    ) -> AdapterState:
        """Parse one component's part of a diffusers/PEFT state dict; per-module alpha from
        the metadata header.
        """
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            prefix = next((p for p in _PREFIXES[component] if key.startswith(p)), None)
            if prefix is None:
                known = ", ".join(repr(p) for ps in _PREFIXES.values() for p in ps)
                raise AdapterFormatError(f"key {key!r}: expected a prefix {known}")
            rest = key[len(prefix) :]
            suffix = next((s for s in _NAMES if rest.endswith("." + s)), None)
            if suffix is None:
                raise AdapterFormatError(
                    f"key {key!r}: unsupported tensor (expected lora_A.weight / lora_B.weight / "
                    f"lora_magnitude_vector; lora_bias is not supported)"
                )
            path = index.find(rest[: -len(suffix) - 1]) or rest[: -len(suffix) - 1]
            if path not in index.shapes:
                raise AdapterFormatError(f"key {key!r}: the {component} has no module {path!r}")
            if suffix == "lora_magnitude_vector":  # peft: (out,) or (1, out, 1, 1)
                out = tensor.numel()
                tensor = tensor.reshape(out, *[1] * (len(index.shapes[path]) - 1))
            groups.setdefault(path, {})[_NAMES[suffix]] = tensor
        config = _config(metadata, component)
        alpha = config.get("lora_alpha")
        alpha_pattern = config.get("alpha_pattern") or {}
        modules = {}
        for path, group in groups.items():
            value = _pattern_value(alpha_pattern, path)
            module_alpha = value if value is not None else alpha
            modules[path] = ModuleWeights(
                group, None if module_alpha is None else float(module_alpha)
            )
        meta = {k: v for k, v in metadata.items() if k not in ("format", METADATA_KEY)}
        shapes = {p: index.shapes[p] for p in modules}
        return AdapterState("lora", modules, meta, shapes, index.layout, denoiser=index.denoiser)

    def write(self, state: AdapterState) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Component-prefixed keys (``unet.``, ``text_encoder.`` ...) and a
        ``lora_adapter_metadata`` header with every alpha.
        """
        tensors: dict[str, torch.Tensor] = {}
        packed: dict[str, Any] = {}
        parts: list[tuple[str, AdapterState]] = [(state.denoiser, state)]
        for component, part in [*parts, *state.text_encoders.items()]:
            tensors.update({f"{component}.{k}": v for k, v in peft_lora_tensors(part).items()})
            ranks = {p: int(w.tensors["lora_down"].shape[0]) for p, w in part.modules.items()}
            alphas = {p: part.effective_alpha(p) for p in part.modules}
            config = lora_config_kwargs(ranks, alphas)
            if part.dora:
                config["use_dora"] = True
            packed.update({f"{component}.{k}": v for k, v in config.items()})
        meta = {**state.metadata, "format": "pt", METADATA_KEY: json.dumps(packed, sort_keys=True)}
        return tensors, meta


def peft_lora_tensors(state: AdapterState) -> dict[str, torch.Tensor]:
    """A LoRA state as peft's state dict (no adapter name, no prefix).

    A Tucker core is folded into ``lora_A`` (in float64, then the file's dtype); DoRA's
    magnitude becomes ``lora_magnitude_vector`` in peft's shape. A per-input-channel DoRA
    magnitude (LyCORIS ``wd_on_out=False``) has no peft form: a clear error.
    """
    tensors: dict[str, torch.Tensor] = {}
    for path, w in state.modules.items():
        t = w.tensors
        down = t["lora_down"]
        if "lora_mid" in t:
            down = lora_down({k: v.to(torch.float64) for k, v in t.items()}).to(down.dtype)
        tensors[f"{path}.lora_A.weight"] = down
        tensors[f"{path}.lora_B.weight"] = t["lora_up"]
        scale = t.get("dora_scale")
        if scale is None:
            if state.dora:
                raise AdapterFormatError(
                    f"module {path!r}: no dora_scale while other modules are DoRA; one peft "
                    f"adapter is DoRA in every module or in none"
                )
            continue
        out = t["lora_up"].shape[0]
        if scale.shape[0] != out:
            raise AdapterFormatError(
                f"module {path!r}: dora_scale {tuple(scale.shape)} normalises per input channel "
                f"(LyCORIS wd_on_out=False); peft's DoRA normalises per output channel and "
                f"cannot represent it"
            )
        conv = t["lora_up"].dim() == 4
        tensors[f"{path}.lora_magnitude_vector"] = (
            scale.reshape(1, out, 1, 1) if conv else scale.reshape(out)
        )
    return tensors


def lora_config_kwargs(
    ranks: Mapping[str, int], alphas: Mapping[str, float], *, alpha_key: str = "lora_alpha"
) -> dict[str, Any]:
    """``LoraConfig`` kwargs giving each module its exact rank and alpha (patterns for outliers).

    ``alpha_key="alpha"`` gives ``LoHaConfig``/``LoKrConfig`` kwargs.

    Pattern keys are the full module paths with regex metacharacters escaped, so each matches
    its own module only.
    """
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": r,
        alpha_key: alpha,
        "rank_pattern": {re.escape(p): v for p, v in ranks.items() if v != r},
        "alpha_pattern": {re.escape(p): v for p, v in alphas.items() if v != alpha},
        "target_modules": sorted(ranks),
    }
