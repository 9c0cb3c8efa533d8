"""``kind: concept_world``: colours/shapes/styles seen by the analyser score as harm categories."""

from __future__ import annotations

import pytest
from PIL import Image
from pydantic import ValidationError

from safety_lora.classifiers.base import ImageClassifier
from safety_lora.classifiers.concept_world import ConceptWorldConfig
from safety_lora.concept_world.world import Scene, WorldObject, render
from safety_lora.taxonomy import Category

RGB = {"red": (215, 35, 35), "blue": (40, 70, 220), "yellow": (230, 210, 40)}


def _image(*objects: tuple[str, str, float]) -> Image.Image:
    drawn = tuple(
        WorldObject(shape, colour, "medium", cx, 16.0, 5.0, RGB[colour])
        for colour, shape, cx in objects
    )
    return render(Scene(drawn, (128, 128, 128), 0.0))


def test_scores_follow_the_configured_terms() -> None:
    config = ConceptWorldConfig(unsafe={"sexual": ["red"], "violence": ["blue triangle"]})
    clf = config.build()
    assert isinstance(clf, ImageClassifier)
    images = [
        _image(("red", "circle", 16.0)),
        _image(("blue", "triangle", 16.0)),
        _image(("blue", "square", 16.0)),
        Image.new("RGB", (32, 32), (90, 90, 90)),
    ]
    got = [(s.scores[Category.SEXUAL], s.scores[Category.VIOLENCE]) for s in clf.classify(images)]
    assert got == [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (0.0, 0.0)]


def test_any_object_counts_and_regions_point_at_it() -> None:
    clf = ConceptWorldConfig(unsafe={"sexual": ["triangle"]}).build()
    (scores,) = clf.classify([_image(("yellow", "square", 8.0), ("red", "triangle", 24.0))])
    assert scores.scores == {Category.SEXUAL: 1.0}
    assert [(r.label, r.category) for r in scores.regions] == [("triangle", Category.SEXUAL)]
    assert scores.regions[0].box[0] >= 16
    assert set(scores.labels) == {"yellow square", "red triangle"}


def test_unknown_terms_are_named_in_the_error() -> None:
    with pytest.raises(ValidationError, match=r"\['pink', 'red red'\]"):
        ConceptWorldConfig(unsafe={"sexual": ["red", "pink", "red red"]})
    with pytest.raises(ValidationError, match="not_a_category"):
        ConceptWorldConfig.model_validate({"unsafe": {"not_a_category": ["red"]}})


def test_fingerprint_depends_on_the_configuration() -> None:
    a = ConceptWorldConfig(unsafe={"sexual": ["red"]}).build()
    b = ConceptWorldConfig(unsafe={"sexual": ["red"]}).build()
    c = ConceptWorldConfig(unsafe={"sexual": ["blue"]}).build()
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.name == "concept_world"


def test_style_terms_match_only_objects_of_that_fill() -> None:
    def styled(colour: str, style: str) -> Image.Image:
        obj = WorldObject("square", colour, "large", 16.0, 16.0, 9.0, RGB[colour], style)
        return render(Scene((obj,), (128, 128, 128), 0.0))

    clf = ConceptWorldConfig(unsafe={"sexual": ["striped"], "violence": ["dotted blue"]}).build()
    images = [styled("red", "striped"), styled("red", "dotted"), styled("blue", "dotted")]
    got = [(s.scores[Category.SEXUAL], s.scores[Category.VIOLENCE]) for s in clf.classify(images)]
    assert got == [(1.0, 0.0), (0.0, 0.0), (0.0, 1.0)]
    with pytest.raises(ValidationError, match=r"\['striped dotted'\].*a style"):
        ConceptWorldConfig(unsafe={"sexual": ["striped dotted"]})
