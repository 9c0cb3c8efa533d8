"""Put any supported adapter file onto a diffusers UNet as a peft adapter.

Every family becomes a peft tuner on the UNet, built from a config that gives each module its
exact rank and alpha (``rank_pattern``/``alpha_pattern``), so diffusers' ``set_adapters``,
``fuse_lora``/``unfuse_lora``, ``disable_lora``/``enable_lora`` and ``delete_adapters`` work
for all of them: LoRA as ``LoraConfig``, LoHa as ``LoHaConfig``, LoKr as ``LoKrConfig``, and
full (``diff``) as an exact full-rank LoRA (one factor the identity, ``alpha = rank``, the
``diff_b`` bias on ``lora_B``). Removing the adapter (``delete_adapters``) restores the UNet
exactly; after a fuse/unfuse cycle up to float rounding (peft subtracts the delta back).
DoRA files become a ``LoraConfig(use_dora=True)`` adapter; a Tucker LoCon core is folded into
``lora_A`` (exact).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safety_lora.adapters.formats import FormatName, read_adapter, read_bytes
from safety_lora.adapters.names import ModuleIndex
from safety_lora.adapters.peft_format import lora_config_kwargs, peft_lora_tensors
from safety_lora.adapters.state import (
    AdapterFormatError,
    AdapterIntegrityError,
    AdapterState,
    Family,
)
from safety_lora.internals import kronecker_split, mark_peft_loaded

__all__ = [
    "AdapterInfo",
    "check_fits",
    "load_adapter",
    "load_state",
    "remove_adapter",
    "sha256_of",
    "verified_bytes",
]


@dataclass(frozen=True)
class AdapterInfo:
    """What :func:`load_adapter` put on the UNet."""

    name: str
    path: Path | None
    format: FormatName | None
    family: Family
    modules: tuple[str, ...]
    ranks: dict[str, int | None]
    alphas: dict[str, float | None]
    parameters: int
    sha256: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    #: Text-encoder parts put on the given text encoders: component -> module paths.
    text_encoders: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Text-encoder parts the file has but were skipped (``unet_only``).
    skipped_text_encoders: tuple[str, ...] = ()


def sha256_of(path: str | Path) -> str:
    """The file's sha256 (hex)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_bytes(path: str | Path, sha256: str | None = None) -> tuple[bytes, str]:
    """The file's bytes and their sha256, read once; :class:`AdapterIntegrityError` when the
    file is missing or ``sha256`` pins another hash.
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterIntegrityError(f"steering adapter {str(path)!r}: file not found")
    data = read_bytes(path)
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None and actual != sha256:
        raise AdapterIntegrityError(
            f"steering adapter {str(path)!r}: sha256 is {actual}, the pin is {sha256}; refusing"
        )
    return data, actual


def load_adapter(
    unet: torch.nn.Module,
    path: str | Path,
    *,
    adapter_name: str,
    sha256: str | None = None,
    text_encoders: Mapping[str, torch.nn.Module] | None = None,
    unet_only: bool = False,
) -> AdapterInfo:
    """Read ``path`` (any supported format), check it against ``unet`` and add it as a peft adapter.

    A file's text-encoder parts go onto ``text_encoders`` (by component: ``text_encoder``,
    ``text_encoder_2``) under the same name; with ``unet_only`` they are skipped and listed in
    :attr:`AdapterInfo.skipped_text_encoders`. A part with no text encoder to go on is an
    error, never dropped. ``sha256`` pins the file's hash (:class:`AdapterIntegrityError` on
    mismatch). Raises :class:`AdapterFormatError` for malformed files and adapters that do not
    fit the models.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise AdapterFormatError(f"{str(path)!r}: only .safetensors adapter files are loaded")
    data, actual = verified_bytes(path, sha256)  # one read: what is hashed is what is loaded
    given = dict(text_encoders or {})
    state, fmt = read_adapter(path, unet=unet, data=data, text_encoders=given)
    parts = {} if unet_only else state.text_encoders
    missing = sorted(set(parts) - set(given))
    if missing:
        sizes = ", ".join(f"{c} ({len(parts[c].modules)} modules)" for c in missing)
        raise AdapterFormatError(
            f"{str(path)!r}: the file adapts text encoders too ({sizes}), but the pipeline has "
            f"no {' / '.join(missing)}; set `unet_only: true` on the policy's adapter entry to "
            f"skip that part"
        )
    loaded: list[torch.nn.Module] = []
    try:
        info = load_state(unet, state, adapter_name=adapter_name)
        loaded.append(unet)
        for component, part in parts.items():
            load_state(given[component], part, adapter_name=adapter_name)
            loaded.append(given[component])
    except Exception as e:  # all or nothing: no UNet part left without its text part
        for model in loaded:
            remove_adapter(model, adapter_name)
        if isinstance(e, AdapterFormatError):
            raise AdapterFormatError(f"{str(path)!r}: {e}") from e
        raise
    return AdapterInfo(
        **{
            **info.__dict__,
            "path": path,
            "format": fmt,
            "sha256": actual,
            "text_encoders": {c: tuple(p.modules) for c, p in parts.items()},
            "skipped_text_encoders": tuple(sorted(set(state.text_encoders) - set(parts))),
        }
    )


def load_state(unet: torch.nn.Module, state: AdapterState, *, adapter_name: str) -> AdapterInfo:
    """Add an in-memory adapter to ``unet`` (or a text encoder, for a text-encoder part)
    under ``adapter_name``; the state's own text-encoder parts are not loaded here
    (see :func:`load_adapter`).
    """
    if adapter_name in (getattr(unet, "peft_config", None) or {}):
        raise ValueError(f"adapter name {adapter_name!r} is already loaded on the model")
    check_fits(unet, state)
    config, tensors, biased = _peft_config_and_tensors(state)
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    try:
        with warnings.catch_warnings():  # several adapters on one UNet is what we mean to do
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, unet, adapter_name=adapter_name)
        for path in biased:
            _add_lora_bias(unet.get_submodule(path), adapter_name)
        params = dict(unet.named_parameters())
        for key, tensor in tensors.items():
            model_key = _model_key(key, adapter_name)
            if model_key not in params:
                raise AdapterFormatError(f"{key}: peft created no parameter {model_key!r}")
            if params[model_key].shape != tensor.shape:
                raise AdapterFormatError(
                    f"{key}: shape {tuple(tensor.shape)} cannot be represented by peft's "
                    f"{type(config).__name__} (it builds {tuple(params[model_key].shape)} here)"
                )
        result = set_peft_model_state_dict(unet, dict(tensors), adapter_name)
        unexpected = list(getattr(result, "unexpected_keys", None) or [])
        if unexpected:
            raise AdapterFormatError(f"peft did not use keys {unexpected[:3]}")
        mark_peft_loaded(unet)
    except Exception:
        remove_adapter(unet, adapter_name)
        raise
    return AdapterInfo(
        name=adapter_name,
        path=None,
        format=None,
        family=state.family,
        modules=tuple(state.modules),
        ranks={p: state.rank(p) for p in state.modules},
        alphas={p: state.modules[p].alpha for p in state.modules},
        parameters=state.parameter_count(),
        metadata=dict(state.metadata),
    )


def check_fits(unet: torch.nn.Module, state: AdapterState) -> None:
    """Every module exists in ``unet`` and the adapter's delta has its weight's shape.

    The error names the first module that does not fit, with both shapes.
    """
    index = ModuleIndex.from_model(unet)
    for path in state.modules:
        if path not in index.shapes:
            raise AdapterFormatError(f"module {path!r}: the UNet has no Linear/Conv2d of that name")
        want = index.shapes[path]
        got = state.delta_shape(path)
        flat_ok = len(got) == 2 and got[0] == want[0] and _numel(got[1:]) == _numel(want[1:])
        if got != want and not flat_ok:
            raw = {k: tuple(v.shape) for k, v in state.modules[path].tensors.items()}
            raise AdapterFormatError(
                f"module {path!r}: the adapter's delta has shape {got} (tensors {raw}) but the "
                f"UNet's weight has shape {want}"
            )
        diff_b = state.modules[path].tensors.get("diff_b")
        if diff_b is not None:
            bias = getattr(unet.get_submodule(path), "bias", None)
            if bias is None or tuple(bias.shape) != tuple(diff_b.shape):
                have = None if bias is None else tuple(bias.shape)
                raise AdapterFormatError(
                    f"module {path!r}: diff_b has shape {tuple(diff_b.shape)} but the UNet's "
                    f"bias is {have}"
                )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _model_key(key: str, adapter_name: str) -> str:
    """peft parameter name: ``x.lora_A.weight`` -> ``x.lora_A.<name>.weight``, else ``x.<name>``."""
    if key.endswith(".lora_magnitude_vector"):
        return f"{key}.{adapter_name}.weight"
    for suffix in (".weight", ".bias"):
        if key.endswith(suffix) and ".lora_" in key:
            return f"{key.removesuffix(suffix)}.{adapter_name}{suffix}"
    return f"{key}.{adapter_name}"


def _peft_config_and_tensors(
    state: AdapterState,
) -> tuple[Any, dict[str, torch.Tensor], list[str]]:
    """The peft config, the peft state dict (no adapter name) and the modules with a bias delta."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    tensors: dict[str, torch.Tensor] = {}
    if state.family == "lora":
        tensors = peft_lora_tensors(state)
        ranks = {p: int(w.tensors["lora_down"].shape[0]) for p, w in state.modules.items()}
        alphas = {p: state.effective_alpha(p) for p in state.modules}
        config = LoraConfig(**lora_config_kwargs(ranks, alphas), use_dora=state.dora)
        return config, tensors, []
    if state.family == "full":
        return _full_as_lora(state, LoraConfig)
    for path, w in state.modules.items():
        for name, t in w.tensors.items():
            tensors[f"{path}.{name}"] = t
    if state.family == "loha":
        ranks = {p: int(w.tensors["hada_w1_b"].shape[0]) for p, w in state.modules.items()}
        alphas = {p: state.effective_alpha(p) for p in state.modules}
        kwargs = lora_config_kwargs(ranks, alphas, alpha_key="alpha")
        tucker = any("hada_t1" in w.tensors for w in state.modules.values())
        return LoHaConfig(**kwargs, use_effective_conv2d=tucker), tensors, []
    ranks, alphas = {}, {}
    for path in state.modules:
        rank = state.rank(path)
        if rank is None:  # both Kronecker factors full: scale 1 at a rank peft keeps full
            rank = max(max(t.shape) for t in state.modules[path].tensors.values())
            alphas[path] = float(rank)
        else:
            alphas[path] = state.effective_alpha(path)
        ranks[path] = rank
    kwargs = lora_config_kwargs(ranks, alphas, alpha_key="alpha")
    modules = state.modules.values()
    config = LoKrConfig(
        **kwargs,
        decompose_both=any("lokr_w1_a" in w.tensors for w in modules),
        decompose_factor=_lokr_factor(state),
        use_effective_conv2d=any("lokr_t2" in w.tensors for w in modules),
    )
    return config, tensors, []


def _lokr_factor(state: AdapterState) -> int:
    """The ``decompose_factor`` under which peft splits every module like the file does."""
    splits: list[tuple[tuple[int, int], tuple[int, int]]] = []
    for path, w in state.modules.items():
        t = w.tensors
        w1 = (
            t["lokr_w1"].shape
            if "lokr_w1" in t
            else (t["lokr_w1_a"].shape[0], t["lokr_w1_b"].shape[1])
        )
        shape = state.shapes.get(path) or state.delta_shape(path)
        splits.append(((w1[0], shape[0] // w1[0]), (w1[1], shape[1] // w1[1])))
    candidates = [*sorted({s[0][0] for s in splits} | {s[1][0] for s in splits}), -1]
    for factor in candidates:
        if all(
            kronecker_split(o[0] * o[1], factor) == o and kronecker_split(i[0] * i[1], factor) == i
            for o, i in splits
        ):
            return factor
    paths = list(state.modules)
    bad = next(
        p
        for p, (o, i) in zip(paths, splits, strict=True)
        if kronecker_split(o[0] * o[1], -1) != o or kronecker_split(i[0] * i[1], -1) != i
    )
    raise AdapterFormatError(
        f"module {bad!r}: no peft LoKr decompose_factor reproduces this file's Kronecker splits "
        f"(e.g. {splits[paths.index(bad)]} as (out, in) factor pairs); peft cannot load it"
    )


def _full_as_lora(
    state: AdapterState, lora_config: Any
) -> tuple[Any, dict[str, torch.Tensor], list[str]]:
    """``diff`` as a full-rank LoRA: ``B @ A == diff`` exactly, one factor being the identity."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    biased: list[str] = []
    for path, w in state.modules.items():
        diff = w.tensors["diff"]
        out, inner = diff.shape[0], _numel(tuple(diff.shape[1:]))
        if out <= inner:  # A = diff, B = I
            a, b = diff, torch.eye(out, dtype=diff.dtype)
            b = b.reshape(out, out, *([1] * (diff.dim() - 2)))
            ranks[path] = out
        else:  # A = I (reshaped like the kernel), B = diff
            a = torch.eye(inner, dtype=diff.dtype).reshape(inner, *diff.shape[1:])
            b = diff.reshape(out, inner, *([1] * (diff.dim() - 2)))
            ranks[path] = inner
        tensors[f"{path}.lora_A.weight"] = a
        tensors[f"{path}.lora_B.weight"] = b
        if "diff_b" in w.tensors:
            tensors[f"{path}.lora_B.bias"] = w.tensors["diff_b"]
            biased.append(path)
    alphas = {p: float(r) for p, r in ranks.items()}
    return lora_config(**lora_config_kwargs(ranks, alphas)), tensors, biased


def _add_lora_bias(layer: Any, adapter_name: str) -> None:
    """Give ``lora_B`` a bias on this layer only (peft's ``lora_bias`` is config-wide)."""
    old = layer.lora_B[adapter_name]
    new: torch.nn.Module
    if isinstance(old, torch.nn.Conv2d):  # peft's conv lora_B is always 1x1, stride 1
        new = torch.nn.Conv2d(old.in_channels, old.out_channels, 1, bias=True)
    else:
        new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    layer.lora_B[adapter_name] = new.to(old.weight)
    layer.lora_bias[adapter_name] = True


def add_trainable_adapter(model: torch.nn.Module, config: Any, adapter_name: str) -> None:
    """Inject a fresh peft adapter (``config``) into ``model``, its parameters trainable:
    diffusers' ``add_adapter``, or peft's own injection on a denoiser without diffusers'
    adapter API (PixArt)."""
    target: Any = model
    if hasattr(target, "add_adapter"):
        target.add_adapter(config, adapter_name=adapter_name)
        return
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, model, adapter_name=adapter_name)


def set_adapters_enabled(model: torch.nn.Module, enabled: bool) -> None:
    """Switch every peft adapter layer of ``model`` on or off (diffusers' ``enable_adapters``/
    ``disable_adapters`` do the same, on the models that have them)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(enabled)


def unload_adapters(model: torch.nn.Module) -> None:
    """Remove every adapter and peft's wrappers from ``model``: diffusers' ``unload_lora``,
    or its own steps on a model without it."""
    target: Any = model
    if hasattr(target, "unload_lora"):
        target.unload_lora()
        return
    from diffusers.utils import recurse_remove_peft_layers

    recurse_remove_peft_layers(model)
    if hasattr(model, "peft_config"):
        del target.peft_config


def remove_adapter(model: torch.nn.Module, adapter_name: str) -> None:
    """Remove adapter ``adapter_name`` from a peft-injected model (a partial injection too)
    with diffusers' own layer deletion; the model computes what it did before.
    """
    from diffusers.utils.peft_utils import delete_adapter_layers

    if adapter_name not in (getattr(model, "peft_config", None) or {}):
        return
    delete_adapter_layers(model, adapter_name)
    config = getattr(model, "peft_config", None)  # diffusers models keep theirs
    if config is not None:
        config.pop(adapter_name, None)
