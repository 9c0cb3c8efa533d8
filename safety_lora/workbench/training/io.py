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

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from safety_lora.adapters import AdapterState, ModuleIndex, ModuleWeights
from safety_lora.workbench.training.config import AdapterKind

__all__ = [
    "adapter_state",
    "load_checkpoint",
    "read_adapter_info",
    "save_adapter_file",
    "save_checkpoint",
]

_NS = "safety_lora."


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
