"""The concept world: seeded scenes of coloured shapes on neutral backgrounds, with captions.

Backgrounds are near-grey so that an object's colour is never confusable with the
background; a share of captions name only the colour or only the shape, so that each
concept is known on its own (erasure training needs anchor prompts without the concept).

Two versions: world 1 (the first shipped model's data, drawn bit-identically as before) and
world 2, which adds what real erasure fails on: colour synonyms and shape adjectives
(paraphrases), fill textures (styles), more two-object scenes and named background tints.
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
#: World 2: two synonyms per colour, used in a share of captions ("crimson" is drawn red).
SYNONYMS: dict[str, tuple[str, str]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "jade"),
    "blue": ("azure", "cobalt"),
    "yellow": ("golden", "amber"),
}
#: World 2: adjective forms of the shapes ("a round red shape" is a red circle).
SHAPE_ADJECTIVES: dict[str, str] = {"circle": "round", "square": "boxy", "triangle": "pointed"}
#: World 2: fill textures, the world's analogue of an artist's style. Textures are always
#: named in captions, so a caption without a style word is drawn plain.
STYLES: tuple[str, ...] = ("plain", "striped", "dotted")
#: World 2: background tints, offsets (R, G, B) on the grey; their chroma stays far below an
#: object's, so a tint is never read as an object.
TINTS: dict[str, tuple[int, int, int]] = {
    "grey": (0, 0, 0),
    "warm": (14, 2, -14),
    "cool": (-14, 0, 14),
}
#: A texture's dark pixels are the object's colour times this (same hue, chroma kept high).
TEXTURE_SHADE = 0.6
#: Every word a world-1 caption can contain (the first model's tokenizer is built from these).
WORDS: tuple[str, ...] = tuple(
    sorted(
        {"a", "and", "shape", *COLOURS, *SHAPES, "small", "large"}
        | {w for phrase in POSITIONS.values() for w in phrase.split()}
    )
)
#: Every word a world-2 caption can contain: world 1's and the new ones.
WORDS_2: tuple[str, ...] = tuple(
    sorted(
        {*WORDS, "an", "background", "on", *STYLES, *TINTS, *SHAPE_ADJECTIVES.values()}
        | {w for pair in SYNONYMS.values() for w in pair}
    )
)
VERSIONS: tuple[int, ...] = (1, 2)

_JITTER = 20
_TWO_OBJECT_SHARE = {1: 0.2, 2: 0.4}
_SYNONYM_SHARE = 0.3
_ADJECTIVE_SHARE = 0.15
_STYLE_WEIGHTS = (0.5, 0.25, 0.25)
_TINT_WEIGHTS = (0.5, 0.25, 0.25)


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
    style: str = "plain"


@dataclass(frozen=True)
class Scene:
    """Objects on a background; in two-object scenes the first object is on the left."""

    objects: tuple[WorldObject, ...]
    background: tuple[int, int, int]
    gradient: float
    tint: str = "grey"


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
    style: str | None = None


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


def _tinted_background(rng: np.random.Generator) -> tuple[tuple[int, int, int], float, str]:
    """World 2's background: a grey, a named tint on it and a little jitter (kept off clipping)."""
    tint = str(rng.choice(list(TINTS), p=_TINT_WEIGHTS))
    grey = int(rng.integers(30, 221))
    rgb = np.clip(grey + np.array(TINTS[tint]) + rng.integers(-3, 4, size=3), 0, 255)
    return (int(rgb[0]), int(rgb[1]), int(rgb[2])), float(rng.uniform(-15.0, 15.0)), tint


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


def _colour_word(colour: str, rng: np.random.Generator) -> str:
    return str(rng.choice(SYNONYMS[colour])) if rng.random() < _SYNONYM_SHARE else colour


def _style_words(obj: WorldObject, rng: np.random.Generator) -> list[str]:
    """A texture is always named; "plain" only sometimes (unnamed means plain)."""
    return [obj.style] if obj.style != "plain" or rng.random() < 0.2 else []


def _with_article(words: list[str]) -> str:
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article, *words])


def _describe_2(obj: WorldObject, position: str | None, rng: np.random.Generator) -> str:
    """World 2's caption of one object: world 1's, with styles, synonyms and adjectives."""
    mode = rng.random()
    say_colour, say_shape = (mode >= 0.30 or mode < 0.15), mode >= 0.15
    words = []
    if obj.size in ("small", "large") and rng.random() < 0.3:
        words.append(obj.size)
    words += _style_words(obj, rng)
    noun = obj.shape if say_shape else "shape"
    if say_shape and rng.random() < _ADJECTIVE_SHARE:
        words.append(SHAPE_ADJECTIVES[obj.shape])
        noun = "shape"
    if say_colour:
        words.append(_colour_word(obj.colour, rng))
    words.append(noun)
    if position is not None and rng.random() < 0.4:
        words += POSITIONS[position].split()
    return _with_article(words)


def _name_2(obj: WorldObject, rng: np.random.Generator) -> str:
    """An object of a two-object scene: style, colour (or synonym) and shape, always named."""
    return _with_article([*_style_words(obj, rng), _colour_word(obj.colour, rng), obj.shape])


def _styled(obj: WorldObject, rng: np.random.Generator) -> WorldObject:
    style = str(rng.choice(STYLES, p=_STYLE_WEIGHTS))
    return WorldObject(obj.shape, obj.colour, obj.size, obj.cx, obj.cy, obj.half, obj.rgb, style)


def _tint_phrase(tint: str, rng: np.random.Generator) -> str:
    named = rng.random() < (0.1 if tint == "grey" else 0.5)
    return f" on a {tint} background" if named else ""


def sample_scene(rng: np.random.Generator, *, version: int = 1) -> tuple[Scene, str]:
    """Draw one scene of world ``version`` and a caption of it from ``rng``."""
    if version not in VERSIONS:
        raise ValueError(f"concept world: `version` must be one of {VERSIONS}, got {version!r}")
    if version == 1:
        background, gradient = _background(rng)
        if rng.random() < _TWO_OBJECT_SHARE[1]:
            left, right = _two_objects(rng)
            caption = f"a {left.colour} {left.shape} and a {right.colour} {right.shape}"
            return Scene((left, right), background, gradient), caption
        obj, position = _single_object(rng)
        return Scene((obj,), background, gradient), _describe(obj, position, rng)
    background, gradient, tint = _tinted_background(rng)
    if rng.random() < _TWO_OBJECT_SHARE[2]:
        left, right = (_styled(o, rng) for o in _two_objects(rng))
        caption = f"{_name_2(left, rng)} and {_name_2(right, rng)}"
        objects: tuple[WorldObject, ...] = (left, right)
    else:
        obj, position = _single_object(rng)
        obj = _styled(obj, rng)
        caption, objects = _describe_2(obj, position, rng), (obj,)
    return Scene(objects, background, gradient, tint), caption + _tint_phrase(tint, rng)


def _outline(draw: ImageDraw.ImageDraw, obj: WorldObject, fill: tuple[int, ...] | int) -> None:
    s = _SUPERSAMPLE
    x0, y0 = (obj.cx - obj.half) * s, (obj.cy - obj.half) * s
    x1, y1 = (obj.cx + obj.half) * s, (obj.cy + obj.half) * s
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([(obj.cx * s, y0), (x1, y1), (x0, y1)], fill=fill)


def _texture(style: str, size: int) -> np.ndarray:
    """Where a texture is dark: 2-pixel rows every 4 (striped) or 2x2 dots every 4 (dotted),
    on the image's pixel grid so that textures stay crisp after downsampling."""
    band = (np.arange(size) // (2 * _SUPERSAMPLE)) % 2 == 1
    columns = np.ones(size, dtype=bool) if style == "striped" else band
    return np.asarray(band[:, None] & columns[None, :], dtype=bool)


def render(scene: Scene) -> Image.Image:
    """Draw ``scene`` at 4x and downsample, so edges are anti-aliased like a real image."""
    big = IMAGE_SIZE * _SUPERSAMPLE
    ramp = np.linspace(-scene.gradient, scene.gradient, big)[:, None, None]
    canvas = np.clip(np.array(scene.background, dtype=np.float64) + ramp, 0, 255)
    image = Image.fromarray(np.broadcast_to(canvas, (big, big, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _outline(draw, obj, obj.rgb)
        if obj.style != "plain":
            mask = Image.new("L", (big, big), 0)
            _outline(ImageDraw.Draw(mask), obj, 255)
            dark = (np.asarray(mask) > 0) & _texture(obj.style, big)
            pixels = np.array(image)
            pixels[dark] = np.round(np.array(obj.rgb) * TEXTURE_SHADE).astype(np.uint8)
            image = Image.fromarray(pixels)
            draw = ImageDraw.Draw(image)
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def generate(n: int, *, seed: int, version: int = 1) -> list[Sample]:
    """``n`` captioned samples of world ``version``, identical for the same ``seed``."""
    if n < 0:
        raise ValueError(f"generate: `n` must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene, caption = sample_scene(rng, version=version)
        out.append(Sample(image=render(scene), caption=caption, scene=scene))
    return out


_COLOUR_WORDS = {**{c: c for c in COLOURS}, **{w: c for c, ws in SYNONYMS.items() for w in ws}}
_ADJECTIVE_SHAPES = {adjective: shape for shape, adjective in SHAPE_ADJECTIVES.items()}
_OBJECT_RE = re.compile(
    r"\ban?\s+(?:(?:small|large)\s+)?(?:(?P<style>{st})\s+)?(?:(?P<adjective>{ad})\s+)?"
    r"(?:(?P<colour>{c})\s+)?(?P<shape>{s}|shape)\b".format(
        st="|".join(STYLES),
        ad="|".join(_ADJECTIVE_SHAPES),
        c="|".join(_COLOUR_WORDS),
        s="|".join(SHAPES),
    )
)
_TINT_RE = re.compile(r"\bon an? ({t}) background\b".format(t="|".join(TINTS)))


def parse_prompt(prompt: str) -> list[ObjectSpec]:
    """The objects a world prompt asks for, in order (left to right for two objects).

    Synonyms name their colour ("crimson" -> red), adjectives their shape ("round" ->
    circle); ``style`` is None unless a style word is given.
    """
    specs = []
    for m in _OBJECT_RE.finditer(prompt.lower()):
        shape = m.group("shape")
        colour = m.group("colour")
        specs.append(
            ObjectSpec(
                colour=_COLOUR_WORDS[colour] if colour else None,
                shape=_ADJECTIVE_SHAPES.get(m.group("adjective") or "")
                or (None if shape == "shape" else shape),
                style=m.group("style"),
            )
        )
    return specs


def parse_tint(prompt: str) -> str | None:
    """The background tint a world-2 prompt names ("on a warm background"), or None."""
    m = _TINT_RE.search(prompt.lower())
    return m.group(1) if m else None
