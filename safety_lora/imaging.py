"""Image operations the policy's actions need: region/whole blur and a labelled placeholder."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["blur", "placeholder"]

_PLACEHOLDER_GREY = (128, 128, 128)


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
