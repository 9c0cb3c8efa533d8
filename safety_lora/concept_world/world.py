"""The concept world: seeded scenes of coloured shapes on neutral backgrounds, with captions.

Backgrounds are near-grey so that an object's colour is never confusable with the
background; a share of captions name only the colour or only the shape, so that each
concept is known on its own (erasure training needs anchor prompts without the concept).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 32
_SUPERSAMPLE = 4

#: Base RGB of every colour; drawn objects jitter around it (hue stays unambiguous).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 180, 50),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Named sizes and their half-extent ranges in pixels; "medium" is never named in captions.
SIZES: dict[str, tuple[float, float]] = {
    "small": (4.0, 6.0),
    "medium": (6.5, 8.5),
    "large": (9.0, 11.0),
}
#: Named positions and their caption phrases.
POSITIONS: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
}
#: Every word a caption can contain (the tokenizer's vocabulary is built from these).
WORDS: tuple[str, ...] = tuple(
    sorted(
        {"a", "and", "shape", *COLOURS, *SHAPES, "small", "large"}
        | {w for phrase in POSITIONS.values() for w in phrase.split()}
    )
)

_JITTER = 20
_TWO_OBJECT_SHARE = 0.2


@dataclass(frozen=True)
class WorldObject:
    """One drawn object: its concepts and geometry (centre and half-extent in pixels)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    half: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """Objects on a background; in two-object scenes the first object is on the left."""

    objects: tuple[WorldObject, ...]
    background: tuple[int, int, int]
    gradient: float


@dataclass(frozen=True)
class Sample:
    """A rendered scene and one caption of it."""

    image: Image.Image
    caption: str
    scene: Scene


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt asks for about one object; ``None`` where the prompt does not say."""

    colour: str | None
    shape: str | None


def _jitter_rgb(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    base = np.array(COLOURS[colour])
    rgb = np.clip(base + rng.integers(-_JITTER, _JITTER + 1, size=3), 0, 255)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def _centre_range(position: str | None, half: float, axis: str) -> tuple[float, float]:
    lo, hi = half + 1.0, IMAGE_SIZE - 1.0 - half
    mid = IMAGE_SIZE / 2
    if (axis, position) in {("x", "left"), ("y", "top")}:
        hi = max(lo, min(hi, mid - 3.0))
    elif (axis, position) in {("x", "right"), ("y", "bottom")}:
        lo = min(hi, max(lo, mid + 3.0))
    return lo, hi


def _single_object(rng: np.random.Generator) -> tuple[WorldObject, str | None]:
    size = str(rng.choice(list(SIZES)))
    half = float(rng.uniform(*SIZES[size]))
    position = str(rng.choice([*POSITIONS, "any"]))
    pos = None if position == "any" else position
    cx = float(rng.uniform(*_centre_range(pos, half, "x")))
    cy = float(rng.uniform(*_centre_range(pos, half, "y")))
    colour = str(rng.choice(list(COLOURS)))
    obj = WorldObject(
        shape=str(rng.choice(SHAPES)),
        colour=colour,
        size=size,
        cx=cx,
        cy=cy,
        half=half,
        rgb=_jitter_rgb(rng, colour),
    )
    return obj, pos


def _two_objects(rng: np.random.Generator) -> tuple[WorldObject, WorldObject]:
    objs = []
    concepts: set[tuple[str, str]] = set()
    for side in ("left", "right"):
        while True:
            colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
            if (colour, shape) not in concepts:
                concepts.add((colour, shape))
                break
        half = float(rng.uniform(4.0, 6.0))
        if side == "left":
            cx = float(rng.uniform(half + 1.0, IMAGE_SIZE / 2 - 1.0 - half))
        else:
            cx = float(rng.uniform(IMAGE_SIZE / 2 + 1.0 + half, IMAGE_SIZE - 1.0 - half))
        cy = float(rng.uniform(half + 1.0, IMAGE_SIZE - 1.0 - half))
        rgb = _jitter_rgb(rng, colour)
        objs.append(WorldObject(shape, colour, "small", cx, cy, half, rgb))
    return objs[0], objs[1]


def _background(rng: np.random.Generator) -> tuple[tuple[int, int, int], float]:
    grey = int(rng.integers(20, 236))
    tint = rng.integers(-6, 7, size=3)
    rgb = np.clip(grey + tint, 0, 255)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2])), float(rng.uniform(-20.0, 20.0))


def _describe(obj: WorldObject, position: str | None, rng: np.random.Generator) -> str:
    mode = rng.random()
    if mode < 0.15:
        say_colour, say_shape = True, False
    elif mode < 0.30:
        say_colour, say_shape = False, True
    else:
        say_colour, say_shape = True, True
    words = ["a"]
    if obj.size in ("small", "large") and rng.random() < 0.3:
        words.append(obj.size)
    if say_colour:
        words.append(obj.colour)
    words.append(obj.shape if say_shape else "shape")
    if position is not None and rng.random() < 0.4:
        words.append(POSITIONS[position])
    return " ".join(words)


def sample_scene(rng: np.random.Generator) -> tuple[Scene, str]:
    """Draw one scene and a caption of it from ``rng``."""
    background, gradient = _background(rng)
    if rng.random() < _TWO_OBJECT_SHARE:
        left, right = _two_objects(rng)
        caption = f"a {left.colour} {left.shape} and a {right.colour} {right.shape}"
        return Scene((left, right), background, gradient), caption
    obj, position = _single_object(rng)
    return Scene((obj,), background, gradient), _describe(obj, position, rng)


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` at 4x and downsample, so edges are anti-aliased like a real image."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    ramp = np.linspace(-scene.gradient, scene.gradient, big)[:, None, None]
    canvas = np.clip(np.array(scene.background, dtype=np.float64) + ramp, 0, 255)
    image = Image.fromarray(np.broadcast_to(canvas, (big, big, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    s = _SUPERSAMPLE
    for obj in scene.objects:
        x0, y0 = (obj.cx - obj.half) * s, (obj.cy - obj.half) * s
        x1, y1 = (obj.cx + obj.half) * s, (obj.cy + obj.half) * s
        if obj.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=obj.rgb)
        elif obj.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=obj.rgb)
        else:
            draw.polygon([(obj.cx * s, y0), (x1, y1), (x0, y1)], fill=obj.rgb)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def generate(n: int, *, seed: int) -> list[Sample]:
    """``n`` captioned samples, identical for the same ``seed``."""
    if n < 0:
        raise ValueError(f"generate: `n` must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene, caption = sample_scene(rng)
        out.append(Sample(image=render(scene), caption=caption, scene=scene))
    return out


_OBJECT_RE = re.compile(
    r"\ban?\s+(?:(?:small|large)\s+)?(?:(?P<colour>{c})\s+)?(?P<shape>{s}|shape)\b".format(
        c="|".join(COLOURS), s="|".join(SHAPES)
    )
)


def parse_prompt(prompt: str) -> list[ObjectSpec]:
    """The objects a world prompt asks for, in order (left to right for two objects)."""
    specs = []
    for m in _OBJECT_RE.finditer(prompt.lower()):
        shape = m.group("shape")
        specs.append(
            ObjectSpec(colour=m.group("colour"), shape=None if shape == "shape" else shape)
        )
    return specs
