"""Files that hold several images, built in memory: icons, layered, multi-picture, animated.

Shared by the container regression tests and the container fuzz test. Pillow writes most of
them; a PSD (Pillow reads it only) is written here by hand, and so is a GIF frame that reaches
past the logical screen.
"""

from __future__ import annotations

import io
import struct
from typing import Any

from PIL import Image, ImageDraw

from safety_lora.policies import Policy, PolicyEngine

GREY = (128, 128, 128)
RED = (215, 35, 35)
#: Colours the concept-world analyser does not call red (each a different frame, never merged).
SAFE = [(40, 70, 220), (40, 180, 50), (230, 200, 40), (150, 60, 190), (30, 30, 30), (240, 240, 240)]


def disc(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Image.Image:
    """One disc on grey, scaled to ``size`` (red is what the test policy blocks)."""
    width, height = size
    image = Image.new("RGB", size, GREY)
    ImageDraw.Draw(image).ellipse(
        (width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=colour
    )
    return image


def red_policy(**extra: Any) -> Policy:
    """Concept world: a red object is ``sexual`` 1.0, blocked."""
    return Policy.from_dict(
        {
            "classifiers": [{"kind": "concept_world", "unsafe": {"sexual": ["red"]}}],
            "categories": {"sexual": {"threshold": 0.5, "action": "block"}},
            **extra,
        }
    )


ENGINE = PolicyEngine(red_policy())


def saved(images: list[Image.Image], fmt: str, **options: Any) -> bytes:
    """``images`` as one file of ``fmt`` (the first, then the rest appended)."""
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], **options)
    return buffer.getvalue()


def ico(entries: list[Image.Image], *, bitmap: bool = False) -> bytes:
    """An ICO with one entry per image (sizes up to 256, each its own picture)."""
    first = max(entries, key=lambda im: im.width * im.height)
    buffer = io.BytesIO()
    first.save(
        buffer,
        format="ICO",
        sizes=[im.size for im in entries],
        append_images=[im for im in entries if im is not first],
        bitmap_format="bmp" if bitmap else "png",
    )
    return buffer.getvalue()


def icns(main: Image.Image, extra: list[Image.Image]) -> bytes:
    """An ICNS whose slots are ``main`` resized, except those whose pixel size an ``extra``
    image has (e.g. a 32x32 one fills the 16x16@2x slot)."""
    buffer = io.BytesIO()
    main.save(buffer, format="ICNS", append_images=extra)
    return buffer.getvalue()


def icns_two_in_one_slot(png: Image.Image, raw: Image.Image) -> bytes:
    """An ICNS whose 16x16 slot holds both a PNG (``icp4``: what Pillow shows) and a raw
    bitmap with its mask (``is32`` + ``s8mk``)."""
    encoded = io.BytesIO()
    png.save(encoded, format="PNG")
    resources = [
        (b"icp4", encoded.getvalue()),
        (b"is32", raw.convert("RGB").tobytes()),
        (b"s8mk", b"\xff" * 256),
    ]
    body = b"".join(code + struct.pack(">I", 8 + len(data)) + data for code, data in resources)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def psd(composite: Image.Image, layers: list[Image.Image]) -> bytes:
    """An 8-bit RGB Photoshop file: ``composite`` as its merged image, then each layer (each
    the composite's size, raw channels)."""
    width, height = composite.size

    def planes(image: Image.Image) -> list[bytes]:
        return [band.tobytes() for band in image.convert("RGB").split()]

    records, data = b"", b""
    for layer in layers:
        records += struct.pack(">iiiiH", 0, 0, height, width, 3)
        records += b"".join(struct.pack(">hI", c, 2 + width * height) for c in range(3))
        records += b"8BIMnorm" + bytes([255, 0, 0, 0])
        extra = struct.pack(">II", 0, 0) + b"\x03abc"
        records += struct.pack(">I", len(extra)) + extra
        data += b"".join(struct.pack(">H", 0) + plane for plane in planes(layer))
    info = struct.pack(">h", len(layers)) + records + data
    info += b"\0" * (len(info) % 2)
    layer_info = struct.pack(">I", len(info)) + info
    layer_and_mask = struct.pack(">I", len(layer_info) + 4) + layer_info + struct.pack(">I", 0)
    header = (
        b"8BPS" + struct.pack(">H", 1) + b"\0" * 6 + struct.pack(">HIIHH", 3, height, width, 8, 3)
    )
    merged = struct.pack(">H", 0) + b"".join(planes(composite))
    return header + struct.pack(">II", 0, 0) + layer_and_mask + merged


def gif_with_wide_frame(width: int, height: int) -> bytes:
    """A two-frame 16x16 GIF whose second frame's descriptor claims ``width`` x ``height``
    (Pillow grows the canvas to it when that frame is decoded)."""
    data = bytearray(saved([disc(SAFE[0], (16, 16)), disc(SAFE[1], (16, 16))], "GIF"))
    second = data.index(b",", data.index(b",") + 10)  # the second image descriptor
    while data[second - 1 : second] != b"\0":  # a ',' inside LZW data: look further
        second = data.index(b",", second + 1)
    struct.pack_into("<HH", data, second + 5, width, height)
    return bytes(data)


def tiff_pages(sizes: list[tuple[int, int]]) -> bytes:
    """A TIFF of 1-bit white pages of ``sizes`` (group 4: a 6000x6000 page is a few KB)."""
    pages = [Image.new("1", size, 1) for size in sizes]
    return saved(pages, "TIFF", compression="group4")
