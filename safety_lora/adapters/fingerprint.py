"""Fingerprints of a base model's weights: which model an adapter was made for.

Adapter files record ``safety_lora.base_fingerprint``; ``inspect --base`` and the closed-form
cache compare it with the model at hand (from the loaded denoiser, or from its weights file
without loading it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

__all__ = ["base_fingerprint", "weights_fingerprint"]

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
