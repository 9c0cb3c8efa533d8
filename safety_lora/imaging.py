"""Image operations: what a classifier sees of an image, and how a decision renders it.

:func:`views` turns any image Pillow opens into the RGB images to judge: every frame of an
animated GIF/APNG/WebP or multi-page TIFF, each converted correctly from its mode (16-bit
and 32-bit greyscale scaled to 8 bits, floats from 0..1, CMYK, palettes), and for an image
with transparency both what a viewer sees (composited on white) and what its pixels hold
(alpha ignored), so content hidden under a transparent alpha is judged too. :func:`render`
draws a decision (with :func:`blur` and :func:`placeholder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageSequence

from safety_lora.taxonomy import Action

if TYPE_CHECKING:
    from safety_lora.decisions import Decision

__all__ = [
    "BlurSettings",
    "View",
    "blur",
    "frame_count",
    "frame_rgb",
    "placeholder",
    "to_rgb",
    "views",
]


class BlurSettings(Protocol):
    """How :func:`render` blurs, as fractions of the short side (a policy's ``blur`` section)."""

    @property
    def radius(self) -> float:
        """The Gaussian blur radius, as a fraction of the image's short side."""
        ...

    @property
    def region_padding(self) -> float:
        """How far the blur reaches past each detector box, as a fraction of the short side."""
        ...


_PLACEHOLDER_GREY = (128, 128, 128)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass(frozen=True)
class View:
    """One RGB image a classifier judges, and where in the original it comes from."""

    image: Image.Image
    frame: int
    label: str


def frame_count(image: Image.Image) -> int:
    """How many frames (or pages) the image has; 1 for a still."""
    return int(getattr(image, "n_frames", 1) or 1)


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``), 32-bit integer (``I``) or float (``F``) greyscale image as 8-bit:
    16-bit scaled by 1/257; ``I`` and ``F`` by their value range (0..1 floats, 0..255, 16-bit,
    or wider scaled to their maximum)."""
    array = np.asarray(image)
    values = array.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16"):
        values = values / 257.0
    elif image.mode == "F" and top <= 1.0:
        values = values * 255.0
    elif top > 255.0:
        values = values / (257.0 if top <= 65535.0 else top / 255.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """``(as displayed, pixels as stored)``: the current frame in RGB, composited on white;
    the second is the RGB channels with alpha ignored, or None when nothing is transparent.
    """
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        return _grey_to_8bit(image).convert("RGB"), None
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB"), None
    rgba = image.convert("RGBA")
    alpha = rgba.getchannel("A")
    raw = rgba.convert("RGB")
    if alpha.getextrema()[0] == 255:  # fully opaque: one view
        return raw, None
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(raw, mask=alpha)
    return white, raw


def views(image: Image.Image) -> list[View]:
    """Every RGB image to judge for ``image``: each frame, and its stored pixels when alpha
    hides some of them (see :func:`to_rgb`)."""
    n = frame_count(image)
    out: list[View] = []
    frames = ImageSequence.Iterator(image) if n > 1 else [image]
    for index, frame in enumerate(frames):
        where = f"frame {index + 1} of {n}" if n > 1 else "the image"
        shown, stored = to_rgb(frame)
        out.append(View(shown, index, where))
        if stored is not None:
            out.append(View(stored, index, f"{where}, transparency ignored"))
    if n > 1:
        image.seek(0)
    return out


def frame_rgb(image: Image.Image, frame: int) -> Image.Image:
    """Frame ``frame`` of ``image`` as displayed, in RGB (the image is left at frame 0)."""
    if frame_count(image) > 1:
        image.seek(frame)
        try:
            return to_rgb(image)[0].copy()
        finally:
            image.seek(0)
    return to_rgb(image)[0]


def render(image: Image.Image, decision: Decision, settings: BlurSettings) -> Image.Image:
    """The image the policy lets through for ``decision`` (blurred/replaced where it says)."""
    if decision.action is Action.ALLOW:
        return image
    if decision.action is Action.BLUR:
        boxes = [r.box for r in decision.regions]
        frame = frame_rgb(image, decision.frame)
        return blur(frame, boxes, radius=settings.radius, padding=settings.region_padding)
    what = "blocked" if decision.action is Action.BLOCK else "replaced"
    return placeholder(image.size, f"{what} by\nsafety policy")


def blur(
    image: Image.Image,
    boxes: Sequence[tuple[int, int, int, int]] = (),
    *,
    radius: float = 0.08,
    padding: float = 0.1,
) -> Image.Image:
    """Gaussian-blur ``boxes`` (padded), or the whole image when there are none.

    ``radius`` and ``padding`` are fractions of the image's short side, so the effect is the
    same at 32 px and at 1024 px.
    """
    rgb = image.convert("RGB")
    short = min(rgb.size)
    blurred = rgb.filter(ImageFilter.GaussianBlur(max(1.0, radius * short)))
    if not boxes:
        return blurred
    out = rgb.copy()
    pad = round(padding * short)
    width, height = rgb.size
    for x0, y0, x1, y1 in boxes:
        box = (max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad))
        if box[0] < box[2] and box[1] < box[3]:
            out.paste(blurred.crop(box), box[:2])
    return out


def placeholder(size: tuple[int, int], text: str) -> Image.Image:
    """A neutral grey image of ``size`` saying why the original is not shown.

    The text is drawn on the image and also kept in ``image.info["safety_lora"]``.
    """
    image = Image.new("RGB", size, _PLACEHOLDER_GREY)
    draw = ImageDraw.Draw(image)
    width, height = size
    font = ImageFont.load_default(size=max(6, min(width, height) // 12))
    lines = text.split("\n")
    boxes = [draw.textbbox((0, 0), line, font=font) for line in lines]
    line_h = max(b[3] - b[1] for b in boxes) + 2
    y = (height - line_h * len(lines)) / 2
    for line, bbox in zip(lines, boxes, strict=True):
        draw.text(((width - (bbox[2] - bbox[0])) / 2, y), line, fill=(255, 255, 255), font=font)
        y += line_h
    image.info["safety_lora"] = text.replace("\n", " ")
    return image
