"""Trained-adapter files and resumable checkpoints (safetensors only, never pickle).

Adapter files are written through :mod:`safety_lora.adapters`: LoRA in diffusers' format
(``unet.<module>.lora_A.weight``/``lora_B.weight`` plus the ``lora_adapter_metadata``
header, so ``pipe.load_lora_weights`` keeps alpha), LoHa/LoKr in LyCORIS' (``lora_unet_<module
with _>.hada_w1_a`` ... / ``.lokr_w1`` ... and ``.alpha``). All three load with
``safety_lora.adapters.load_adapter``. Training metadata (strings; JSON where structured):
``safety_lora.adapter`` (lora|loha|lokr), ``.rank``, ``.alpha``, ``.target_modules``,
``.method``, ``.concepts``, ``.anchors`` ({concept: anchor, null = the empty prompt}),
``.preserve``, ``.base``, ``.base_fingerprint``, ``.training_args``, ``.steps``,
``.best_step``, ``.val_loss``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from safety_lora.adapters import AdapterState, ModuleIndex, ModuleWeights
from safety_lora.training.config import AdapterKind

__all__ = [
    "adapter_state",
    "base_fingerprint",
    "load_checkpoint",
    "read_adapter_info",
    "save_adapter_file",
    "save_checkpoint",
    "weights_fingerprint",
]

_NS = "safety_lora."


_ADAPTER_TAGS = ("lora_", "hada_", "lokr_")


def base_fingerprint(unet: torch.nn.Module) -> str:
    """sha256 over the UNet's base weights' names, shapes and dtypes plus a few tensors' bytes.

    Adapter parameters (peft layers) are left out, so it is the same before and after
    injection. The hashed tensors are the first, middle and last by sorted name.
    """
    state = {
        k.replace(".base_layer", ""): v
        for k, v in unet.state_dict().items()
        if not any(tag in k for tag in _ADAPTER_TAGS)
    }
    shapes = {k: (tuple(v.shape), v.dtype) for k, v in state.items()}
    return _fingerprint(shapes, state.__getitem__)


def weights_fingerprint(path: str | Path, dtype: torch.dtype | None = None) -> str:
    """:func:`base_fingerprint` of the model whose weights file is ``path`` (safetensors),
    loaded in ``dtype`` (default: as stored), reading only the three hashed tensors.
    """
    with safe_open(str(path), framework="pt") as fh:  # type: ignore[no-untyped-call]
        keys = fh.keys()  # a safe_open handle is not iterable
        names = [k for k in keys if not any(tag in k for tag in _ADAPTER_TAGS)]
        shapes = {}
        for name in names:
            part = fh.get_slice(name)
            stored = getattr(torch, _SAFETENSORS_DTYPES.get(part.get_dtype(), "float32"))
            shapes[name] = (tuple(part.get_shape()), dtype or stored)
        return _fingerprint(shapes, fh.get_tensor)


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _fingerprint(
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], tensor: Callable[[str], torch.Tensor]
) -> str:
    names = sorted(shapes)
    digest = hashlib.sha256()
    for name in names:
        shape, dtype = shapes[name]
        digest.update(f"{name}:{shape}:{dtype}\n".encode())
    for name in sorted({names[0], names[len(names) // 2], names[-1]}):  # not set order
        value = tensor(name).detach().to("cpu", shapes[name][1])  # the dtype it is hashed in
        digest.update(value.to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def adapter_state(
    unet: Any, adapter_name: str, *, kind: AdapterKind, alpha: float, metadata: dict[str, str]
) -> AdapterState:
    """The UNet's peft adapter ``adapter_name`` as an :class:`AdapterState` (exact tensors)."""
    from peft import get_peft_model_state_dict

    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in get_peft_model_state_dict(unet, adapter_name=adapter_name).items():
        if kind == "lora":
            path, part = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
            name = {"lora_A": "lora_down", "lora_B": "lora_up"}[part]
        else:
            path, name = key.rsplit(".", 1)
        groups.setdefault(path, {})[name] = tensor.detach().to("cpu").contiguous()
    modules = {path: ModuleWeights(tensors, alpha) for path, tensors in groups.items()}
    index = ModuleIndex.from_model(unet)  # SDXL: LyCORIS files get LDM names
    return AdapterState(kind, modules, dict(metadata), layout=index.layout, denoiser=index.denoiser)


def save_adapter_file(
    path: Path, unet: Any, adapter_name: str, info: dict[str, Any]
) -> dict[str, str]:
    """Write the UNet's adapter ``adapter_name`` to ``path`` with ``info`` as metadata.

    ``info`` needs ``adapter``, ``rank``, ``alpha`` and ``target_modules``; every value is
    stored under ``safety_lora.<key>`` (strings as is, anything else as JSON). LoRA goes out
    in diffusers' format, LoHa/LoKr in LyCORIS' (both read by :mod:`safety_lora.adapters`).
    Returns the metadata written.
    """
    from safety_lora.adapters import write_adapter
    from safety_lora.adapters.formats import read_safetensors

    meta = {
        _NS + key: value if isinstance(value, str) else json.dumps(value)
        for key, value in info.items()
    }
    kind = info["adapter"]
    state = adapter_state(unet, adapter_name, kind=kind, alpha=float(info["alpha"]), metadata=meta)
    tmp = path.with_name(path.stem + ".tmp.safetensors")
    write_adapter(state, tmp, to="peft" if kind == "lora" else "lycoris")
    tmp.replace(path)
    return read_safetensors(path)[1]


def read_adapter_info(path: str | Path) -> dict[str, Any]:
    """The ``safety_lora.*`` metadata of a trained adapter file: prefix dropped, JSON decoded."""
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    info: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith(_NS):
            try:
                info[key[len(_NS) :]] = json.loads(value)
            except json.JSONDecodeError:
                info[key[len(_NS) :]] = value
    for needed in ("adapter", "rank", "alpha", "target_modules"):
        if needed not in info:
            raise ValueError(f"{str(path)!r} is not a safety-lora trained adapter: no {needed!r}")
    return info


def save_checkpoint(
    path: Path,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    meta: dict[str, str],
) -> None:
    """Write ``tensors``, the optimizer state (as ``optim.<i>.<key>`` tensors) and ``meta``.

    The optimizer's param groups go to metadata as JSON; the file is written under a
    temporary name and renamed, so a crash mid-write leaves the previous checkpoint intact.
    """
    out = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    state = optimizer.state_dict()
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"optim.{index}.{key}"] = tensor.detach().to("cpu").contiguous()
    metadata = {**meta, "param_groups": json.dumps(state["param_groups"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(out, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_checkpoint(
    path: Path, *, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Restore ``optimizer`` from :func:`save_checkpoint`; return the other tensors and meta."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optim."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return {k: v for k, v in tensors.items() if not k.startswith("optim.")}, meta
