"""The analyser reads colour and shape of generated ground truth (>= 99%)."""

from __future__ import annotations

from PIL import Image, ImageFilter

from safety_lora.concept_world.analyser import analyse
from safety_lora.concept_world.world import generate


def test_accuracy_on_generated_ground_truth() -> None:
    samples = generate(400, seed=123)
    correct = 0
    for sample in samples:
        seen = sorted(analyse(sample.image).objects, key=lambda o: o.box[0])
        wanted = [(o.colour, o.shape) for o in sample.scene.objects]
        correct += [(o.colour, o.shape) for o in seen] == wanted
    assert correct / len(samples) >= 0.99


def test_main_object_is_the_largest() -> None:
    for sample in generate(60, seed=4):
        if len(sample.scene.objects) == 1:
            analysis = analyse(sample.image)
            assert (analysis.colour, analysis.shape) == (
                sample.scene.objects[0].colour,
                sample.scene.objects[0].shape,
            )


def test_blurred_images_keep_their_colour() -> None:
    samples = [s for s in generate(120, seed=9) if len(s.scene.objects) == 1]
    blurred = [analyse(s.image.filter(ImageFilter.GaussianBlur(1.0))) for s in samples]
    hits = sum(a.colour == s.scene.objects[0].colour for a, s in zip(blurred, samples, strict=True))
    assert hits == len(samples)


def test_plain_background_has_no_object() -> None:
    for grey in (20, 128, 235):
        analysis = analyse(Image.new("RGB", (32, 32), (grey, grey, grey)))
        assert analysis.objects == ()
        assert (analysis.colour, analysis.shape) == (None, None)


def test_world_2_attributes_on_generated_ground_truth() -> None:
    """Per attribute >= 99%: colour, shape and style of every object (two-object scenes
    object by object) and the background's tint."""
    samples = generate(600, seed=321, version=2)
    hits = dict.fromkeys(("colour", "shape", "style"), 0)
    objects = tints = 0
    for sample in samples:
        analysis = analyse(sample.image)
        seen = sorted(analysis.objects, key=lambda o: o.box[0])
        assert len(seen) == len(sample.scene.objects), sample.caption
        for got, drawn in zip(seen, sample.scene.objects, strict=True):
            objects += 1
            for attribute in hits:
                hits[attribute] += getattr(got, attribute) == getattr(drawn, attribute)
        tints += analysis.background == sample.scene.tint
    assert {k: v / objects >= 0.99 for k, v in hits.items()} == dict.fromkeys(hits, True), hits
    assert tints / len(samples) >= 0.99
    styles = {o.style for s in samples for o in s.scene.objects}
    assert styles == {"plain", "striped", "dotted"}
