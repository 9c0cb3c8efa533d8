"""The world generator: deterministic from a seed, captions say what is drawn."""

from __future__ import annotations

import numpy as np
import pytest

from safety_lora.concept_world.world import (
    COLOURS,
    IMAGE_SIZE,
    SHAPES,
    Scene,
    WorldObject,
    generate,
    parse_prompt,
    render,
)


def test_same_seed_same_samples_other_seed_differs() -> None:
    a, b, c = generate(30, seed=7), generate(30, seed=7), generate(30, seed=8)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all(
        np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b, strict=True)
    )
    assert [s.caption for s in a] != [s.caption for s in c]


def test_captions_match_drawn_objects() -> None:
    for sample in generate(400, seed=1):
        specs = parse_prompt(sample.caption)
        objects = sample.scene.objects
        assert len(specs) == len(objects), sample.caption
        for spec, obj in zip(specs, objects, strict=True):
            assert spec.colour in (None, obj.colour), sample.caption
            assert spec.shape in (None, obj.shape), sample.caption
        obj = objects[0]
        if "small" in sample.caption.split():
            assert obj.size == "small"
        if "large" in sample.caption.split():
            assert obj.size == "large"
        if "on the left" in sample.caption:
            assert obj.cx < IMAGE_SIZE / 2
        if "at the bottom" in sample.caption:
            assert obj.cy > IMAGE_SIZE / 2


def test_partial_captions_name_each_concept_alone() -> None:
    captions = [s.caption for s in generate(400, seed=2)]
    colour_only = {c for c in captions if c.endswith(" shape")}
    shape_only = {c for c in captions if not any(w in COLOURS for w in c.split())}
    two = [c for c in captions if " and " in c]
    assert {c.split()[-2] for c in colour_only} == set(COLOURS)
    assert {w for c in shape_only for w in c.split() if w in SHAPES} == set(SHAPES)
    assert 0.1 < len(two) / len(captions) < 0.3


def test_render_paints_the_object_colour_on_a_neutral_background() -> None:
    obj = WorldObject("square", "blue", "large", 16.0, 16.0, 10.0, (40, 70, 220))
    image = np.asarray(render(Scene((obj,), (128, 128, 128), 0.0)))
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert tuple(image[16, 16]) == (40, 70, 220)
    assert tuple(image[1, 1]) == (128, 128, 128)


def test_two_object_prompts_parse_left_to_right() -> None:
    specs = parse_prompt("a red circle and a small blue shape")
    assert [(s.colour, s.shape) for s in specs] == [("red", "circle"), ("blue", None)]


def test_negative_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="`n` must be >= 0, got -1"):
        generate(-1, seed=0)
