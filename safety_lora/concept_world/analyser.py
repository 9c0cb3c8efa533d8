"""Deterministic reading of a concept-world image: the colour and shape of its objects.

Objects are the saturated pixels (backgrounds are near-grey); colour is the nearest named
hue of an object's mean colour, shape the best intersection-over-union among a circle, a
square and an upright triangle fitted to the object's bounding box. Works on blurry model
outputs too, because the mask threshold adapts to the image's peak saturation.
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


@dataclass(frozen=True)
class Analysis:
    """Every object found (largest first); ``colour``/``shape`` are the main object's or None."""

    objects: tuple[DetectedObject, ...]

    @property
    def colour(self) -> str | None:
        return self.objects[0].colour if self.objects else None

    @property
    def shape(self) -> str | None:
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


def analyse(image: Image.Image) -> Analysis:
    """Find the objects of ``image`` (any size, RGB or convertible) and name their concepts."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    peak = float(np.percentile(chroma, 99.5))
    if peak < MIN_CHROMA:
        return Analysis(objects=())
    labels, _ = ndimage.label(chroma >= max(MIN_CHROMA, 0.25 * peak))
    found = []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        region = np.where(labels[sl] == index, chroma[sl], 0.0)
        component = region >= max(MIN_CHROMA, 0.5 * float(region.max()))
        area = int(component.sum())
        if area < MIN_AREA:
            continue
        rows, cols = np.nonzero(component)
        component = component[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        y0, x0 = sl[0].start + int(rows.min()), sl[1].start + int(cols.min())
        pixels = rgb[sl][region >= max(MIN_CHROMA, 0.5 * float(region.max()))]
        colour = _nearest_colour(pixels.mean(axis=0))
        scores = _shape_scores(component)
        shape = max(scores, key=lambda k: scores[k])
        box = (x0, y0, x0 + component.shape[1], y0 + component.shape[0])
        found.append(DetectedObject(colour, shape, area, box, scores))
    found.sort(key=lambda o: (-o.area, o.box))
    return Analysis(objects=tuple(found))
