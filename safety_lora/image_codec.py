"""Image bytes in and out, with limits checked from the header before any pixel is decoded.

Used by the service, the middleware and the CLI (pure Pillow: no web framework needed).
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import IcoImagePlugin, Image, UnidentifiedImageError

from safety_lora.imaging import Page, ico_pages, pages, to_rgb

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "EncodedImage",
    "ImageDecodeError",
    "check_pixels",
    "decode_b64_image",
    "decode_image",
    "encode_image",
    "open_image_file",
]

#: 4096 x 4096: far above any generation size, far below a decompression bomb. The budget is
#: for all of a file's images together (frames, pages, layers, icon entries).
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


def check_pixels(found: list[Page], max_pixels: int, setting: str = "max_image_pixels") -> None:
    """Refuse (:class:`ImageDecodeError`) a file whose images (``found``, from
    :func:`~safety_lora.imaging.pages`) hold more than ``max_pixels`` pixels together;
    ``setting`` is the limit's name in the message. A page over Pillow's own decompression-bomb
    limit is refused too, whatever ``max_pixels`` allows (Pillow would refuse to decode it)."""
    bomb = Image.MAX_IMAGE_PIXELS
    for page in found:
        if bomb is not None and page.pixels > 2 * bomb:
            raise ImageDecodeError(
                f"{page.label} is {page.size[0]}x{page.size[1]} = {page.pixels} pixels, over "
                f"the limit of {2 * bomb} pixels (decompression bomb)"
            )
    total = sum(page.pixels for page in found)
    if total <= max_pixels:
        return
    limit = f"over the limit of {max_pixels} pixels ({setting})"
    if len(found) == 1:
        (width, height) = found[0].size
        raise ImageDecodeError(f"image is {width}x{height} = {total} pixels, {limit}")
    running, at = 0, found[-1]
    for page in found:
        running += page.pixels
        if running > max_pixels:
            at = page
            break
    raise ImageDecodeError(
        f"image holds {len(found)} images (frames, pages, layers or icon sizes) of {total} "
        f"pixels in all, {limit}; {at.label} ({at.size[0]}x{at.size[1]}) goes over it"
    )


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, setting: str = "max_image_pixels"
) -> EncodedImage:
    """Open ``data`` by its content (any format Pillow reads) and decode its first image, once
    the pixels of every image it holds (each frame, page, layer or icon entry, sized from the
    headers) fit ``max_pixels`` together (``setting`` names that limit in the error). Later
    images decode when the engine judges them."""
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        _check_icon_directory(data, max_pixels, setting)
        im = Image.open(io.BytesIO(data))
        check_pixels(pages(im), max_pixels, setting)
        im.load()
        fmt = im.format or "PNG"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard fired while reading a header (far beyond our limit).
        raise ImageDecodeError(
            f"image is over the limit of {max_pixels} pixels (decompression bomb): {e}"
        ) from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError("not a recognised image format") from e
    except ImageDecodeError:
        raise
    except Exception as e:  # whatever else Pillow raises on hostile bytes (struct.error, ...)
        raise ImageDecodeError(f"cannot decode image: {type(e).__name__}: {e}") from e
    return EncodedImage(image=im, format=fmt)


def _check_icon_directory(data: bytes, max_pixels: int, setting: str) -> None:
    """Size an ICO's entries before Pillow opens it (opening decodes the largest), and refuse
    a CUR of several cursors (Pillow reads only the largest: the others could not be judged)."""
    if data.startswith(b"\0\0\1\0"):
        check_pixels(ico_pages(IcoImagePlugin.IcoFile(io.BytesIO(data))), max_pixels, setting)
    elif data.startswith(b"\0\0\2\0") and len(data) >= 6:
        cursors = int.from_bytes(data[4:6], "little")
        if cursors > 1:
            raise ImageDecodeError(
                f"a CUR file of {cursors} cursors: only one can be read, so the others could "
                f"not be judged; give each cursor as its own file"
            )


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


def open_image_file(
    path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, setting: str = "max_image_pixels"
) -> Image.Image:
    """The image in ``path``, known by content, decoded as :func:`decode_image` does (within
    the same pixel budget); errors are :class:`ImageDecodeError` (or ``OSError`` reading)."""
    return decode_image(path.read_bytes(), max_pixels=max_pixels, setting=setting).image
