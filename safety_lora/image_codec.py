"""Image bytes in and out, with limits checked from the header before any pixel is decoded.

Used by the service, the middleware and the CLI (pure Pillow: no web framework needed).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from safety_lora.imaging import to_rgb

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EncodedImage",
    "ImageDecodeError",
    "decode_b64_image",
    "decode_image",
    "encode_image",
    "open_image_file",
]

#: 4096 x 4096: far above any generation size, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 4096 * 4096


class ImageDecodeError(ValueError):
    """The bytes are not a readable image, or the image is over the pixel limit."""


@dataclass(frozen=True)
class EncodedImage:
    """A decoded image (its mode and every frame kept, for the engine to judge) plus what is
    needed to encode a replacement the same way."""

    image: Image.Image
    format: str
    data_url_prefix: str = ""


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodedImage:
    """Open ``data`` by its content (any format Pillow reads) and decode its first frame; the
    size is checked from the header first. Later frames decode when the engine judges them.
    """
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        im = Image.open(io.BytesIO(data))
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image is {width}x{height} = {width * height} pixels, over the limit of "
                f"{max_pixels} pixels"
            )
        im.load()
        fmt = im.format or "PNG"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard fired while reading the header (far beyond our limit).
        raise ImageDecodeError(
            f"image is over the limit of {max_pixels} pixels (decompression bomb): {e}"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not a recognised image format") from e
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageDecodeError):
            raise
        raise ImageDecodeError(f"cannot decode image: {e}") from e
    return EncodedImage(image=im, format=fmt)


def decode_b64_image(text: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodedImage:
    """Decode a base64 string or ``data:image/...;base64,`` URL (prefix kept for re-encoding)."""
    prefix = ""
    if text.startswith("data:"):
        head, sep, rest = text.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ImageDecodeError("a data URL must look like 'data:image/png;base64,<data>'")
        prefix, text = head + ",", rest
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageDecodeError(f"not valid base64: {e}") from e
    decoded = decode_image(data, max_pixels=max_pixels)
    return EncodedImage(image=decoded.image, format=decoded.format, data_url_prefix=prefix)


def encode_image(image: Image.Image, fmt: str = "PNG") -> bytes:
    """Encode ``image`` as ``fmt`` (formats Pillow cannot write fall back to PNG)."""
    fmt = fmt.upper()
    Image.init()  # registers every writer in Image.SAVE
    if fmt not in Image.SAVE:
        fmt = "PNG"
    buffer = io.BytesIO()
    to_rgb(image)[0].save(buffer, format=fmt)  # any mode converted right (16-bit, alpha...)
    return buffer.getvalue()


def open_image_file(path: Path) -> Image.Image:
    """The image in ``path``, known by content, its first frame decoded (later ones on
    judging); PIL's errors propagate for the caller to report per file."""
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    return image
