"""Image operations: what a classifier sees of an image, and how a decision renders it.

:func:`pages` lists every image a file holds, sized from its headers before any pixel is
decoded: each frame of an animated GIF/APNG/WebP, each page of a TIFF, picture of an MPO,
layer (and the composite) of a PSD, and each entry of an ICO or ICNS icon. :func:`views`
turns them into the RGB images to judge, each converted correctly from its mode (16-bit and
32-bit greyscale scaled to 8 bits, floats from 0..1, CMYK, palettes), and for an image with
transparency both what a viewer sees (composited on white) and what its pixels hold (alpha
ignored), so content hidden under a transparent alpha is judged too. :func:`render` draws a
decision (with :func:`blur` and :func:`placeholder`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    IcnsImagePlugin,
    IcoImagePlugin,
    Image,
    ImageDraw,
    ImageFilter,
    ImageFont,
    PngImagePlugin,
    PsdImagePlugin,
)

from safety_lora.taxonomy import Action

if TYPE_CHECKING:
    from safety_lora.decisions import Decision

__all__ = [
    "BlurSettings",
    "Page",
    "View",
    "blur",
    "frame_rgb",
    "ico_pages",
    "pages",
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


@dataclass(frozen=True)
class Page:
    """One image a file holds (a frame, page, layer or icon entry), sized from its header.

    ``index`` is what a decision's ``frame`` names: the frame, page or entry number from 0, or
    a PSD layer's number (0 for the composite)."""

    index: int
    size: tuple[int, int]
    label: str

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.size[0] * self.size[1]


#: Formats whose frames all have the image's size, and whose seek decodes earlier frames.
_CANVAS_FRAMES = frozenset({"PNG", "FLI"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: What an ICNS slot read by ``read_png_or_jpeg2000`` may hold (opened header-first).
_ICNS_EMBEDDED = ("PNG", "JPEG2000")


def pages(image: Image.Image) -> list[Page]:
    """Every image ``image``'s file holds, in order, sized from its headers (no pixel decoded):
    one for a still; each frame or page of a sequence (GIF, APNG, WebP, TIFF, MPO, ...); a
    PSD's composite, then each layer; each entry of an ICO or ICNS icon.

    A broken header raises Pillow's own error (``OSError``, ``SyntaxError``, ``ValueError``,
    ``EOFError``, ``DecompressionBombError``) for the caller to refuse the file.
    """
    if isinstance(image, IcoImagePlugin.IcoImageFile):
        return ico_pages(image.ico)
    if isinstance(image, IcnsImagePlugin.IcnsImageFile):
        slots = _icns_slots(image.icns)
        return _labelled([_icns_slot_size(image.icns, *slot) for slot in slots], "icon")
    n = int(getattr(image, "n_frames", 1) or 1)
    if isinstance(image, PsdImagePlugin.PsdImageFile) and image.layers:
        layers = [  # a layer without pixels (a group's divider, an adjustment) has no tile
            Page(k, image.size, f"layer {k} of {n}")
            for k, (_, _, _, tile) in enumerate(image.layers, start=1)
            if tile
        ]
        return [Page(0, image.size, "the composite"), *layers]
    if n == 1:
        return [Page(0, image.size, "the image")]
    if isinstance(image, GifImagePlugin.GifImageFile):
        sizes = _gif_sizes(image, n)
    elif image.format in _CANVAS_FRAMES:
        sizes = [image.size] * n
    else:  # seeking reads the frame's header only (TIFF, MPO, WebP, DCX, ...)
        sizes = _seek_sizes(image, n)
    return _labelled(sizes, "frame")


def ico_pages(ico: IcoImagePlugin.IcoFile) -> list[Page]:
    """Each entry of an ICO directory, sized from the header of the PNG or bitmap it holds
    (not the directory's claim); usable before opening, as Pillow decodes one entry on open."""
    sizes = []
    for header in ico.entry:
        ico.buf.seek(header.offset)
        png = ico.buf.read(8) == _PNG_MAGIC
        ico.buf.seek(header.offset)
        if png:
            sizes.append(PngImagePlugin.PngImageFile(ico.buf).size)
        else:  # a bitmap's header counts its AND mask in the height
            width, height = BmpImagePlugin.DibImageFile(ico.buf).size
            sizes.append((width, height // 2))
    return _labelled(sizes, "icon")


def _labelled(sizes: Sequence[tuple[int, int]], kind: str) -> list[Page]:
    n = len(sizes)
    if kind == "icon":
        return [Page(i, s, f"icon {s[0]}x{s[1]} ({i + 1} of {n})") for i, s in enumerate(sizes)]
    return [Page(i, s, f"{kind} {i + 1} of {n}") for i, s in enumerate(sizes)]


def _seek_sizes(image: Image.Image, n: int) -> list[tuple[int, int]]:
    start = image.tell()
    try:
        sizes = []
        for index in range(n):
            image.seek(index)
            sizes.append(image.size)
        return sizes
    finally:
        image.seek(start)


def _file_of(image: Image.Image) -> IO[bytes]:
    """The stream a multi-image file keeps open for seeking (Pillow's ``_fp``)."""
    fp = getattr(image, "_fp", None)
    if not callable(getattr(fp, "read", None)):
        raise ValueError(f"the {image.format} file is closed: its images cannot be read")
    stream: IO[bytes] = fp  # type: ignore[assignment]
    return stream


def _gif_sizes(image: GifImagePlugin.GifImageFile, n: int) -> list[tuple[int, int]]:
    """Each frame's size as Pillow will decode it, from the GIF's block headers: the logical
    screen, grown by every frame that reaches past it (as Pillow grows it)."""
    fp = _file_of(image)
    where = fp.tell()
    sizes: list[tuple[int, int]] = []
    try:
        fp.seek(0)
        head = fp.read(13)
        width, height = _u16(head, 6), _u16(head, 8)
        if head[10] & 0x80:  # global colour table
            fp.seek(3 << ((head[10] & 7) + 1), io.SEEK_CUR)
        while len(sizes) < n:
            tag = fp.read(1)
            if not tag or tag == b";":
                break
            if tag == b"!":  # an extension: its label, then sub-blocks
                fp.read(1)
                _skip_sub_blocks(fp)
            elif tag == b",":  # an image descriptor, then its colour table and data
                desc = fp.read(9)
                if len(desc) < 9:
                    break
                width = max(width, _u16(desc, 0) + _u16(desc, 4))
                height = max(height, _u16(desc, 2) + _u16(desc, 6))
                if desc[8] & 0x80:
                    fp.seek(3 << ((desc[8] & 7) + 1), io.SEEK_CUR)
                fp.read(1)  # LZW minimum code size
                _skip_sub_blocks(fp)
                sizes.append((width, height))
    finally:
        fp.seek(where)
    return sizes + [(width, height)] * (n - len(sizes))


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "little")


def _skip_sub_blocks(fp: IO[bytes]) -> None:
    while (length := fp.read(1)) and length[0]:
        fp.seek(length[0], io.SEEK_CUR)


def _icns_slots(icns: IcnsImagePlugin.IcnsFile) -> list[tuple[tuple[int, int, int], bytes]]:
    """Every image resource of an ICNS file, as (its size slot, its code); a slot may hold
    both a PNG and a raw bitmap, and each is judged (masks belong to their bitmap)."""
    return [
        (slot, code)
        for slot, formats in icns.SIZES.items()
        for code, reader in formats
        if code in icns.dct and reader is not IcnsImagePlugin.read_mk
    ]


def _icns_embedded(
    icns: IcnsImagePlugin.IcnsFile, slot: tuple[int, int, int], code: bytes
) -> Image.Image | None:
    """The PNG or JPEG 2000 image an ICNS resource embeds, opened (header only), or None for
    a raw bitmap resource."""
    if dict(icns.SIZES[slot])[code] is not IcnsImagePlugin.read_png_or_jpeg2000:
        return None
    start, length = icns.dct[code]
    icns.fobj.seek(start)
    return Image.open(io.BytesIO(icns.fobj.read(length)), formats=_ICNS_EMBEDDED)


def _icns_slot_size(
    icns: IcnsImagePlugin.IcnsFile, slot: tuple[int, int, int], code: bytes
) -> tuple[int, int]:
    embedded = _icns_embedded(icns, slot, code)
    if embedded is not None:
        return embedded.size
    return slot[0] * slot[2], slot[1] * slot[2]


def _icns_image(
    icns: IcnsImagePlugin.IcnsFile, slot: tuple[int, int, int], code: bytes
) -> Image.Image:
    """One ICNS resource decoded: an embedded PNG/JPEG 2000, or a raw bitmap with its mask."""
    embedded = _icns_embedded(icns, slot, code)
    if embedded is not None:
        embedded.load()
        return embedded
    readers = dict(icns.SIZES[slot])
    image = readers[code](icns.fobj, icns.dct[code], slot)["RGB"]
    mask = next((c for c, r in readers.items() if r is IcnsImagePlugin.read_mk), None)
    if mask is not None and mask in icns.dct:
        image = image.copy()
        image.putalpha(IcnsImagePlugin.read_mk(icns.fobj, icns.dct[mask], slot)["A"])
    return image


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


def _each_page(
    image: Image.Image, wanted: Sequence[Page], use: Callable[[Page, Image.Image], None]
) -> None:
    """Call ``use`` with each ``wanted`` page of ``image`` decoded, in order; ``image`` is left
    showing what it showed before (its first frame, a PSD's composite, an icon's largest)."""
    if isinstance(image, IcoImagePlugin.IcoImageFile):
        for page in wanted:
            entry = image.ico.frame(page.index)
            entry.load()
            use(page, entry)
        return
    if isinstance(image, IcnsImagePlugin.IcnsImageFile):
        slots = _icns_slots(image.icns)
        for page in wanted:
            use(page, _icns_image(image.icns, *slots[page.index]))
        return
    if isinstance(image, PsdImagePlugin.PsdImageFile) and image.layers:
        # A PSD cannot seek back to its composite: each layer is read from a fresh handle.
        for page in wanted:
            if page.index == 0:
                use(page, image)
                continue
            fp = _file_of(image)
            fp.seek(0)
            with Image.open(fp, formats=["PSD"]) as layer:
                assert isinstance(layer, PsdImagePlugin.PsdImageFile)
                layer.frame = 0  # Pillow calls both the composite and layer 1 "frame 1"
                layer.seek(page.index)
                use(page, layer)
        return
    if int(getattr(image, "n_frames", 1) or 1) == 1:  # a still: the image itself
        for page in wanted:
            use(page, image)
        return
    start = image.tell()
    try:
        for page in wanted:
            image.seek(page.index)
            use(page, image)
    finally:
        if isinstance(image, PngImagePlugin.PngImageFile):
            # Pillow's APNG keeps the next frame's header read ahead of a middle frame and
            # replays it after a rewind (a "frame sequence" error): end on the last frame.
            image.seek(image.n_frames - 1)
        image.seek(start)


def views(image: Image.Image) -> list[View]:
    """Every RGB image to judge for ``image``: each of its :func:`pages`, and its stored pixels
    where alpha hides some of them (see :func:`to_rgb`)."""
    out: list[View] = []

    def add(page: Page, decoded: Image.Image) -> None:
        shown, stored = to_rgb(decoded)
        out.append(View(shown, page.index, page.label))
        if stored is not None:
            out.append(View(stored, page.index, f"{page.label}, transparency ignored"))

    _each_page(image, pages(image), add)
    return out


def frame_rgb(image: Image.Image, frame: int) -> Image.Image:
    """Page ``frame`` of ``image`` (see :func:`pages`) as displayed, in RGB; ``image`` is left
    showing what it showed before."""
    (page,) = [p for p in pages(image) if p.index == frame]
    found: list[Image.Image] = []
    _each_page(image, [page], lambda _, decoded: found.append(to_rgb(decoded)[0]))
    return found[0]


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
