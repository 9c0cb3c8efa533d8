"""Deterministic reading of a concept-world image: the colour and shape of its objects.

Objects are the saturated pixels (backgrounds are near-grey); colour is the nearest named
hue of an object's mean colour, shape the best intersection-over-union among a circle, a
square and an upright triangle fitted to the object's bounding box. Works on blurry model
outputs too, because the mask threshold adapts to the image's peak saturation.

World 2's attributes: an object's style is read from the brightness pattern inside it (rows
that alternate: striped; rows and columns: dotted; flat: plain), the background's tint from
the red-blue balance of the pixels away from every object.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from safety_lora.concept_world.world import COLOURS, SHAPES

#: Chroma (max - min channel, 0..255) below which a pixel is never part of an object.
MIN_CHROMA = 40.0
#: Components smaller than this many pixels are noise, not objects.
MIN_AREA = 6
#: Brightness spread (std of value / the object's bright level) above which a fill is textured.
TEXTURE_CONTRAST = 0.08
#: How much more of a textured fill's brightness variance lies between rows than between
#: columns for it to be striped (stripes: about 1 vs 0; dots: about 1/3 each).
STRIPE_SHARE_GAP = 0.4
#: Red minus blue (0..255) of the background beyond which it is warm (or, negative, cool).
TINT_BALANCE = 14.0

_HUES = {
    name: colorsys.rgb_to_hsv(*(c / 255 for c in rgb))[0] * 360 for name, rgb in COLOURS.items()
}


@dataclass(frozen=True)
class DetectedObject:
    """One object found in an image: its concepts, pixel area and box ``(x0, y0, x1, y1)``."""

    colour: str
    shape: str
    area: int
    box: tuple[int, int, int, int]
    shape_scores: dict[str, float]
    style: str


@dataclass(frozen=True)
class Analysis:
    """Every object found (largest first); ``colour``/``shape`` are the main object's or None.

    ``background`` is the tint of the pixels away from every object (a key of ``world.TINTS``).
    """

    objects: tuple[DetectedObject, ...]
    background: str

    @property
    def colour(self) -> str | None:
        """The main (largest) object's colour; None when no object was found."""
        return self.objects[0].colour if self.objects else None

    @property
    def shape(self) -> str | None:
        """The main (largest) object's shape; None when no object was found."""
        return self.objects[0].shape if self.objects else None


def _nearest_colour(rgb: np.ndarray) -> str:
    hue = colorsys.rgb_to_hsv(*(float(c) / 255 for c in rgb))[0] * 360

    def distance(name: str) -> float:
        d = abs(hue - _HUES[name]) % 360
        return min(d, 360 - d)

    return min(_HUES, key=distance)


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    cx, cy = w / 2, h / 2
    circle = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
    triangle = np.abs(xs - cx) <= (w / 2) * (ys / h)
    return {"circle": circle, "square": np.ones((h, w), dtype=bool), "triangle": triangle}


def _shape_scores(mask: np.ndarray) -> dict[str, float]:
    scores = {}
    for name, template in _templates(*mask.shape).items():
        union = np.logical_or(mask, template).sum()
        scores[name] = float(np.logical_and(mask, template).sum() / union) if union else 0.0
    return {name: scores[name] for name in SHAPES}


def _solid(mask: np.ndarray) -> np.ndarray:
    """``mask`` with a texture's gaps (up to 2 pixels) closed and its holes filled."""
    padded = np.pad(mask, 2)
    closed = ndimage.binary_closing(padded, structure=np.ones((3, 3), dtype=bool))
    return np.asarray(ndimage.binary_fill_holes(closed[2:-2, 2:-2]), dtype=bool)


def _style(value: np.ndarray, solid: np.ndarray) -> str:
    """Plain, striped or dotted, from the brightness ``value`` inside the object's interior."""
    interior = ndimage.binary_erosion(solid, structure=np.ones((3, 3), dtype=bool))
    if interior.sum() < MIN_AREA:
        return "plain"
    bright = float(np.percentile(value[interior], 90))
    v = np.where(interior, value / max(bright, 1.0), 0.0)
    n, mean = float(interior.sum()), float(v[interior].mean())
    total = float(((v[interior] - mean) ** 2).sum())
    if np.sqrt(total / n) < TEXTURE_CONTRAST:
        return "plain"

    def between(axis: int) -> float:
        counts = interior.sum(axis=axis)
        lines = counts > 0
        means = v.sum(axis=axis)[lines] / counts[lines]
        return float((counts[lines] * (means - mean) ** 2).sum()) / total

    return "striped" if between(1) - between(0) > STRIPE_SHARE_GAP else "dotted"


def _tint(rgb: np.ndarray, objects: np.ndarray) -> str:
    """Warm, cool or grey: the red-blue balance of the pixels 2+ pixels away from objects."""
    away = ~ndimage.binary_dilation(objects, iterations=2)
    pixels = rgb[away] if away.any() else rgb.reshape(-1, 3)
    balance = float(pixels[:, 0].mean() - pixels[:, 2].mean())
    if balance > TINT_BALANCE:
        return "warm"
    return "cool" if balance < -TINT_BALANCE else "grey"


def analyse(image: Image.Image) -> Analysis:
    """Find the objects of ``image`` (any size, RGB or convertible) and name their concepts."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    value = rgb.max(axis=2)
    peak = float(np.percentile(chroma, 99.5))
    if peak < MIN_CHROMA:
        return Analysis(objects=(), background=_tint(rgb, np.zeros(chroma.shape, dtype=bool)))
    labels, _ = ndimage.label(chroma >= max(MIN_CHROMA, 0.25 * peak))
    found = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = np.where(labels[sl] == index, chroma[sl], 0.0)
        strong = region >= max(MIN_CHROMA, 0.5 * float(region.max()))
        area = int(strong.sum())
        if area < MIN_AREA:
            continue
        solid = _solid(strong)
        rows, cols = np.nonzero(solid)
        crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        component = solid[crop]
        y0, x0 = sl[0].start + int(rows.min()), sl[1].start + int(cols.min())
        colour = _nearest_colour(rgb[sl][strong].mean(axis=0))
        scores = _shape_scores(component)
        shape = max(scores, key=lambda k: scores[k])
        box = (x0, y0, x0 + component.shape[1], y0 + component.shape[0])
        style = _style(value[sl][crop], component)
        found.append(DetectedObject(colour, shape, area, box, scores, style))
    found.sort(key=lambda o: (-o.area, o.box))
    return Analysis(objects=tuple(found), background=_tint(rgb, labels > 0))
