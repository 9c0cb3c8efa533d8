"""The images a pipeline call brings: found by argument, made PIL for judging, swapped back.

diffusers pipelines take input images as ``image`` (image-to-image, inpainting, edit
pipelines), ``mask_image``, ``control_image`` (ControlNet, T2I-Adapter) and
``ip_adapter_image`` (IP-Adapter image prompts): each a PIL image, an ``np.ndarray`` (HW,
HWC or NHWC in 0..1, or uint8), a ``torch.Tensor`` (HW, CHW or NCHW in 0..1, or -1..1), or a
list of them (nested for several IP-Adapters). Every one is judged; what cannot be judged is
an :class:`InputError` naming the argument (latents passed as ``image``, image embeddings).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["INPUT_ARGUMENTS", "InputError", "InputImage", "find_inputs", "owners", "substitute"]

#: The pipeline arguments that carry images, judged before generation.
INPUT_ARGUMENTS = ("image", "mask_image", "control_image", "ip_adapter_image")
#: Arguments that would hide an image from the policy: refused, as ``prompt_embeds`` are.
_HIDDEN = {"ip_adapter_image_embeds": "ip_adapter_image"}


class InputError(ValueError):
    """An input image the policy cannot judge; the message names the argument and index."""


@dataclass(frozen=True)
class InputImage:
    """One image of a call: its argument, its index path in that argument, and its pixels."""

    argument: str
    path: tuple[int, ...]
    image: Image.Image

    @property
    def name(self) -> str:
        """How decisions and audit lines name it: ``image``, ``image[1]``, ``mask_image[0][2]``."""
        return self.argument + "".join(f"[{i}]" for i in self.path)


def find_inputs(call: Mapping[str, Any]) -> list[InputImage]:
    """Every input image of a pipeline call (its keyword arguments), in argument order."""
    for hidden, instead in _HIDDEN.items():
        if call.get(hidden) is not None:
            raise InputError(
                f"`{hidden}` hides the image from the safety policy, which judges input "
                f"images; pass `{instead}` instead"
            )
    return [item for arg in INPUT_ARGUMENTS for item in _walk(arg, call.get(arg), ())]


def _walk(argument: str, value: Any, path: tuple[int, ...]) -> Iterator[InputImage]:
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _walk(argument, item, (*path, i))
        return
    batched = (isinstance(value, torch.Tensor) and value.ndim == 4) or (
        isinstance(value, np.ndarray) and value.ndim == 4
    )
    if batched:
        for i in range(int(value.shape[0])):
            yield InputImage(argument, (*path, i), _to_pil(argument, (*path, i), value[i]))
        return
    yield InputImage(argument, path, _to_pil(argument, path, value))


def _to_pil(argument: str, path: tuple[int, ...], value: Any) -> Image.Image:
    """One image as PIL (channels-last uint8), or an :class:`InputError` saying why not."""
    name = argument + "".join(f"[{i}]" for i in path)
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, torch.Tensor):
        if value.ndim == 3 and value.shape[0] == 4:  # diffusers takes such tensors as latents
            raise InputError(
                f"`{name}`: a tensor of 4 channels is taken as latents, and latents cannot be "
                f"judged; pass pixels (3 channels, 0..1)"
            )
        if value.ndim == 3:
            value = value.permute(1, 2, 0)  # CHW -> HWC
        array = value.detach().to("cpu", torch.float32).numpy()
    elif isinstance(value, np.ndarray):
        array = value
    else:
        raise InputError(
            f"`{name}`: a PIL image, np.ndarray or torch.Tensor is judged; got "
            f"{type(value).__name__}"
        )
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"`{name}`: shape {tuple(array.shape)} is not an image")
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise InputError(f"`{name}`: holds NaN or infinite values")
        if array.min() < 0.0:  # diffusers' -1..1 convention
            array = (array + 1.0) / 2.0
        array = np.clip(array * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(array)


def owners(item: InputImage, call: Mapping[str, Any], n_prompts: int) -> list[int]:
    """The prompts an input serves: prompt ``i`` for entry ``i`` of a list (or batch) with one
    entry per prompt and one image per prompt, every prompt otherwise (with several images per
    prompt diffusers pairs init images with outputs round-robin, across prompts)."""
    value = call.get(item.argument)
    if isinstance(value, (list, tuple)):
        entries = len(value)
    elif isinstance(value, (torch.Tensor, np.ndarray)) and value.ndim == 4:
        entries = int(value.shape[0])
    else:
        entries = 0
    per = int(call.get("num_images_per_prompt") or 1)
    if n_prompts > 1 and per == 1 and item.path and entries == n_prompts:
        return [item.path[0]]
    return list(range(n_prompts))


def substitute(
    call: dict[str, Any], replacements: Mapping[tuple[str, tuple[int, ...]], Image.Image]
) -> None:
    """Put ``replacements`` ((argument, path) -> image) into ``call`` in each value's own form
    (PIL, array or tensor, same dtype and range); the caller's objects are not modified."""
    for (argument, path), image in replacements.items():
        call[argument] = _replaced(call[argument], path, image)


def _replaced(value: Any, path: tuple[int, ...], image: Image.Image) -> Any:
    if not path or not isinstance(value, (list, tuple, torch.Tensor, np.ndarray)):
        return _like(image, value)
    if isinstance(value, (list, tuple)):
        items = list(value)
        items[path[0]] = _replaced(items[path[0]], path[1:], image)
        return type(value)(items) if isinstance(value, tuple) else items
    out = value.clone() if isinstance(value, torch.Tensor) else value.copy()
    out[path[0]] = _like(image, value[path[0]])
    return out


def _like(image: Image.Image, like: Any) -> Any:
    """``image`` in ``like``'s form: PIL as is; arrays/tensors with its layout, dtype, range."""
    if isinstance(like, Image.Image):
        return image.convert(like.mode) if image.mode != like.mode else image
    channels_last = isinstance(like, np.ndarray) or (
        isinstance(like, torch.Tensor) and like.ndim == 2
    )
    shape = tuple(like.shape if channels_last else (*like.shape[1:], like.shape[0]))
    mode = "L" if len(shape) == 2 or shape[-1] == 1 else ("RGBA" if shape[-1] == 4 else "RGB")
    array = np.asarray(image.convert(mode).resize((shape[1], shape[0])))
    array = array.reshape(shape)
    if isinstance(like, np.ndarray) and like.dtype == np.uint8:
        return array
    floats = array.astype(np.float32) / 255.0
    if float(like.min()) < 0.0:
        floats = floats * 2.0 - 1.0
    if isinstance(like, np.ndarray):
        return floats.astype(like.dtype)
    tensor = torch.from_numpy(floats)
    if not channels_last:
        tensor = tensor.permute(2, 0, 1)
    return tensor.to(like)
