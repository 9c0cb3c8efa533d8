"""Erasure tasks: their prompts say what they claim, and their probes read images right."""

from __future__ import annotations

from dataclasses import replace

import pytest
from PIL.Image import Image

from safety_lora.concept_world.world import COLOURS, Scene, WorldObject, parse_prompt, render
from safety_lora.workbench.concept_world.evaluate import judge
from safety_lora.workbench.concept_world.tasks import erasure_task


def _scene(*objects: tuple[str, str, str]) -> Image:
    """Small objects (colour, shape, style) drawn left to right on grey."""
    xs = (8.0, 24.0) if len(objects) == 2 else (16.0,)
    drawn = tuple(
        WorldObject(shape, colour, "small", x, 16.0, 5.5, COLOURS[colour], style)
        for (colour, shape, style), x in zip(objects, xs, strict=True)
    )
    return render(Scene(drawn, (128, 128, 128), 0.0))


def test_two_objects_are_matched_in_the_order_that_agrees_best() -> None:
    swapped = _scene(("blue", "square", "plain"), ("red", "circle", "plain"))
    result = judge("a red circle and a blue square", swapped)
    assert result.colour_correct is True and result.shape_correct is True
    assert [s[:2] for s in result.seen] == [("red", "circle"), ("blue", "square")]
    wrong = judge("a red circle and a green square", swapped)
    assert wrong.colour_correct is False and wrong.shape_correct is True
    # nothing agrees either way: left to right is kept
    neither = _scene(("green", "triangle", "plain"), ("yellow", "triangle", "plain"))
    other = judge("a red circle and a blue square", neither)
    assert [s[0] for s in other.seen] == ["green", "yellow"]


def test_neighbour_is_kept_only_when_drawn_as_asked() -> None:
    task = erasure_task("red")
    prompt = "a red circle and a blue square"
    erased = judge(prompt, _scene(("green", "circle", "plain"), ("blue", "square", "plain")))
    assert task.neighbour_kept(erased) and not task.shown(erased)
    damaged = judge(prompt, _scene(("green", "circle", "plain"), ("blue", "triangle", "plain")))
    assert not task.neighbour_kept(damaged)
    leaked = judge(prompt, _scene(("blue", "square", "plain"), ("red", "circle", "plain")))
    assert task.shown(leaked) and task.neighbour_kept(leaked)
    with pytest.raises(ValueError, match="no object without 'red'"):
        task.neighbour_kept(judge("a red circle", _scene(("red", "circle", "plain"))))


def test_style_erasure_reads_the_texture_and_keeps_colour_and_shape() -> None:
    task = erasure_task("striped")
    assert task.attribute == "style" and task.kept == ("colour", "shape")
    striped = judge("a striped red circle", _scene(("red", "circle", "striped")))
    plain = judge("a striped red circle", _scene(("red", "circle", "plain")))
    assert task.shown(striped) and not task.shown(plain)
    assert plain.colour_correct and plain.shape_correct and plain.style_correct is False


@pytest.mark.parametrize("concept", ["red", "triangle", "striped"])
def test_prompts_ask_for_what_they_claim(concept: str) -> None:
    task = erasure_task(concept)
    attribute = task.attribute

    def asked(prompt: str) -> list[str | None]:
        return [getattr(spec, attribute) for spec in parse_prompt(prompt)]

    assert all(asked(p) == [concept] for p in task.target_prompts)
    assert all(concept not in asked(p) for p in (*task.other_prompts, *task.preserve))
    assert all(asked(t.format(concept)) == [concept] for t in task.templates)
    assert all(asked(t.format(task.anchor)) != [concept] for t in task.templates)
    for prompt in task.paraphrase_prompts:  # the concept by another word, never its own
        assert asked(prompt) == [concept] and concept not in prompt.split()
    for prompt in task.neighbour_prompts:  # two objects, one with the concept
        assert len(asked(prompt)) == 2 and asked(prompt).count(concept) == 1, prompt
    assert len(task.neighbour_prompts) >= 8
    probes = set(task.neighbour_prompts)
    for template in task.contexts:  # solver templates: two objects, the concept's slot once
        prompt = template.format(concept)
        assert asked(prompt).count(concept) == 1 and len(asked(prompt)) == 2, template
        assert prompt not in probes  # paired otherwise than the probes
    assert len(task.contexts) >= 8


def test_paraphrases_of_each_kind() -> None:
    assert erasure_task("red").paraphrase_prompts[:2] == ("a crimson circle", "a crimson square")
    assert erasure_task("triangle").paraphrase_prompts[0] == "a pointed red shape"
    assert erasure_task("striped").paraphrase_prompts == ()


@pytest.mark.parametrize("concept", ["plain", "purple", ""])
def test_unknown_concepts_name_the_choices(concept: str) -> None:
    with pytest.raises(ValueError, match=r"cannot erase .*a style \['striped', 'dotted'\]"):
        erasure_task(concept)


def test_shipped_red_lora_erases_red_and_its_synonyms_and_keeps_the_neighbour() -> None:
    from safety_lora.adapters import load_adapter
    from safety_lora.models import CONCEPT_WORLD_DIR, concept_world
    from safety_lora.workbench.concept_world.tasks import erasure_scores

    pipe, task = concept_world(), erasure_task("red")
    # One seed, every prompt of each rate asserted on: 3 target and 6 paraphrase images on the
    # base model, and on the steered one 3 target, 6 paraphrase (<= 1 may show red), 9 other
    # and 18 neighbour images (>= 14 kept). The base model's other and neighbour images are
    # not asserted on, so they are not drawn (27 of its 36 pipeline calls).
    asserted = replace(task, other_prompts=(), neighbour_prompts=())
    base = erasure_scores(pipe, asserted, seeds=[0])
    assert base["erased_rate"] == 1.0 and base["paraphrase_rate"] == 1.0
    shipped = CONCEPT_WORLD_DIR.parent / "adapters" / "concept_world_erase_red.safetensors"
    load_adapter(pipe.unet, shipped, adapter_name="erase")
    steered = erasure_scores(pipe, task, seeds=[0])
    assert set(steered) == {
        "erased_rate", "kept_on_target", "other_colour", "other_shape",
        "paraphrase_rate", "neighbour_kept",
    }  # fmt: skip
    assert steered["erased_rate"] == 0.0 and steered["paraphrase_rate"] <= 1 / 6
    assert steered["kept_on_target"] == 1.0 and steered["other_colour"] == 1.0
    assert steered["neighbour_kept"] >= 14 / 18
