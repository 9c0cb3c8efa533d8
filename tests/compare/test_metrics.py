"""Scores, prompt sets and the Pareto front."""

from __future__ import annotations

import pytest
from PIL import Image

from safety_lora.compare.metrics import (
    ConceptWorldJudge,
    concept_world_prompts,
    mean_std,
    pareto_front,
    score,
)
from safety_lora.concept_world.world import COLOURS, ObjectSpec, Scene, WorldObject, render


def _drawn(colour: str, shape: str) -> Image.Image:
    obj = WorldObject(shape, colour, "large", 16.0, 16.0, 10.0, COLOURS[colour])
    return render(Scene((obj,), (128, 128, 128), 0.0))


def test_prompt_sets() -> None:
    prompts = concept_world_prompts("red", 4)
    expected = ("a red circle", "a red square", "a red triangle", "a small red circle")
    assert prompts.target == expected
    assert len(prompts.other) == 12 and not any("red" in p for p in prompts.other)
    assert all("triangle" not in p for p in concept_world_prompts("triangle", 3).other)
    with pytest.raises(ValueError, match="'purple'"):
        concept_world_prompts("purple", 3)
    assert ObjectSpec("red", None).colour == "red"


def test_score_counts_withheld_images_as_nothing() -> None:
    prompts = concept_world_prompts("red", 2)
    target = [_drawn("red", "circle"), None]  # the second one was blocked
    other = [_drawn("green", "circle"), _drawn("green", "circle")] + [None] * 4
    scores = score(ConceptWorldJudge("red"), prompts, target, other)
    assert scores.concept_rate == 0.5 and scores.erasure == 0.5
    assert scores.kept == 0.5  # the red circle keeps its shape; the blocked one keeps nothing
    assert scores.other == pytest.approx(1 / 6)  # "a green circle" right; "a green square" wrong
    assert scores.preservation == pytest.approx((0.5 + 1 / 6) / 2)
    assert scores.block_rate == pytest.approx(5 / 8) and scores.images == 8


def test_pareto_front_and_mean_std() -> None:
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (0.9, 0.1), (0.9, 0.1)]
    assert pareto_front(points) == [0, 1, 3, 4]
    assert mean_std([1.0]) == (1.0, 0.0)
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2**0.5))
