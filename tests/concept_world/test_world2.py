"""World 2: paraphrases, styles and scenes; deterministic, captions say what is drawn."""

from __future__ import annotations

import numpy as np
import pytest

from safety_lora.concept_world.model import MAX_TOKENS, build_tokenizer
from safety_lora.concept_world.world import (
    COLOURS,
    SHAPE_ADJECTIVES,
    STYLES,
    SYNONYMS,
    TINTS,
    WORDS,
    WORDS_2,
    Scene,
    WorldObject,
    generate,
    parse_prompt,
    parse_tint,
    render,
)


@pytest.fixture(scope="module")
def samples() -> list:
    return generate(1500, seed=11, version=2)


def test_same_seed_same_samples(samples: list) -> None:
    again = generate(1500, seed=11, version=2)
    assert [s.caption for s in again] == [s.caption for s in samples]
    assert all(
        np.array_equal(np.asarray(a.image), np.asarray(b.image))
        for a, b in zip(samples[:100], again[:100], strict=True)
    )
    assert [s.caption for s in generate(50, seed=12, version=2)] != [
        s.caption for s in samples[:50]
    ]


def test_world_1_is_unchanged_by_world_2() -> None:
    """Version 1 (the default) keeps its vocabulary: no world-2 attribute is ever drawn."""
    default = generate(300, seed=3)
    assert [s.caption for s in default] == [s.caption for s in generate(300, seed=3, version=1)]
    assert {w for s in default for w in s.caption.split()} <= set(WORDS)
    assert {o.style for s in default for o in s.scene.objects} == {"plain"}
    assert {s.scene.tint for s in default} == {"grey"}


def test_captions_match_what_is_drawn(samples: list) -> None:
    for sample in samples:
        specs = parse_prompt(sample.caption)
        objects = sample.scene.objects
        assert len(specs) == len(objects), sample.caption
        for spec, obj in zip(specs, objects, strict=True):
            assert spec.colour in (None, obj.colour), sample.caption
            assert spec.shape in (None, obj.shape), sample.caption
            # textures are always named, so an unnamed style is plain
            assert (spec.style or "plain") == obj.style, sample.caption
        assert parse_tint(sample.caption) in (None, sample.scene.tint), sample.caption


def test_every_new_attribute_appears_in_a_share_of_captions(samples: list) -> None:
    words = [s.caption.split() for s in samples]
    synonyms = {w for pair in SYNONYMS.values() for w in pair}
    share = {
        "synonym": np.mean([any(w in synonyms for w in c) for c in words]),
        "adjective": np.mean([any(w in SHAPE_ADJECTIVES.values() for w in c) for c in words]),
        "style": np.mean([any(w in STYLES for w in c) for c in words]),
        "tint": np.mean([parse_tint(s.caption) is not None for s in samples]),
        "two objects": np.mean([len(s.scene.objects) == 2 for s in samples]),
    }
    assert all(0.05 < v < 0.7 for v in share.values()), share
    assert {w for c in words for w in c if w in synonyms} == synonyms
    assert {parse_tint(s.caption) for s in samples} == {None, *TINTS}


def test_every_caption_tokenizes_word_by_word_within_the_text_length(samples: list) -> None:
    tokenizer = build_tokenizer(WORDS_2)
    for word in WORDS_2:
        assert len(tokenizer(word).input_ids) == 3, word
    longest = max(samples, key=lambda s: len(s.caption.split())).caption
    ids = tokenizer(longest).input_ids
    assert len(ids) == len(longest.split()) + 2 <= MAX_TOKENS, longest


def test_paraphrases_parse_to_their_concepts() -> None:
    specs = parse_prompt("a round crimson shape and an azure triangle")
    assert [(s.colour, s.shape) for s in specs] == [("red", "circle"), ("blue", "triangle")]
    (spec,) = parse_prompt("a striped boxy shape on a cool background")
    assert (spec.colour, spec.shape, spec.style) == (None, "square", "striped")
    assert parse_tint("a striped boxy shape on a cool background") == "cool"
    assert parse_tint("a red circle") is None
    assert {parse_prompt(f"a {w} square")[0].colour for w in SYNONYMS["green"]} == {"green"}


def test_textures_darken_the_fill_in_its_own_hue() -> None:
    def fill(style: str) -> np.ndarray:
        obj = WorldObject("square", "red", "large", 16.0, 16.0, 10.0, COLOURS["red"], style)
        return np.asarray(render(Scene((obj,), (128, 128, 128), 0.0)))[8:24, 8:24]

    plain, striped, dotted = fill("plain"), fill("striped"), fill("dotted")
    assert len(np.unique(plain.reshape(-1, 3), axis=0)) == 1
    dark = (
        (striped.sum(axis=2) < plain.sum(axis=2)).mean(),
        (dotted.sum(axis=2) < plain.sum(axis=2)).mean(),
    )
    assert dark == pytest.approx((0.5, 0.25), abs=0.02)
    # striped rows are uniform: every row is all light or all dark
    rows = striped.sum(axis=2)
    assert all(len(np.unique(row)) == 1 for row in rows)
    hue = striped[..., 0] / striped.sum(axis=2)
    assert np.allclose(hue, hue[0, 0], atol=0.01)


def test_unknown_version_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"`version` must be one of \(1, 2\), got 3"):
        generate(1, seed=0, version=3)


def test_judge_checks_the_style_a_prompt_names() -> None:
    from safety_lora.workbench.concept_world.evaluate import accuracy, judge

    def square(style: str) -> object:
        obj = WorldObject("square", "red", "large", 16.0, 16.0, 9.0, COLOURS["red"], style)
        return render(Scene((obj,), (120, 120, 120), 0.0))

    striped, plain = square("striped"), square("plain")
    assert judge("a striped crimson square", striped).style_correct is True
    assert judge("a striped red square", plain).style_correct is False
    assert judge("a plain red square", plain).style_correct is True
    results = [judge("a red square", striped), judge("a dotted red square", striped)]
    assert results[0].style_correct is None and results[0].colour_correct is True
    assert accuracy(results, "style") == 0.0
    assert results[1].seen == (("red", "square", "striped"),)
