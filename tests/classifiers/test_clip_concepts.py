"""clip_concepts / sd_safety_checker against diffusers' own StableDiffusionSafetyChecker."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_models import random_images, tiny_safety_checker_folder
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from pydantic import ValidationError
from transformers import CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer

from safety_lora.classifiers.base import ImageClassifier
from safety_lora.classifiers.clip_concepts import ClipConceptsConfig, Concept
from safety_lora.classifiers.sd_safety_checker import SDSafetyCheckerConfig
from safety_lora.taxonomy import Category

N_IMAGES = 8
TEMPERATURE = 0.02


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _image_embeds(
    checker: StableDiffusionSafetyChecker, folder: Path, images: list[Image.Image]
) -> torch.Tensor:
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    with torch.no_grad():
        embeds = checker.visual_projection(checker.vision_model(pixels.pixel_values)[1])
    return torch.nn.functional.normalize(embeds, dim=-1)


def _cos(embeds: torch.Tensor, concepts: torch.Tensor) -> np.ndarray:
    return (embeds @ torch.nn.functional.normalize(concepts, dim=-1).T).detach().numpy()


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return random_images(N_IMAGES, seed=1)


@dataclass(frozen=True)
class Designed:
    """A checker folder whose thresholds flag image ``direct`` through concept 0 alone, and
    image ``adjusted`` only through the special-care adjustment (margin -0.005 before +0.01)."""

    folder: Path
    direct: int
    adjusted: int


def _midpoint_below(values: np.ndarray, index: int) -> float:
    """A threshold between ``values[index]`` and the next lower value."""
    lower = values[values < values[index]]
    return float((values[index] + lower.max()) / 2)


@pytest.fixture(scope="module")
def designed(tmp_path_factory: pytest.TempPathFactory, images: list[Image.Image]) -> Designed:
    folder = tiny_safety_checker_folder(tmp_path_factory.mktemp("checker"))
    checker = StableDiffusionSafetyChecker.from_pretrained(folder)
    embeds = _image_embeds(checker, folder, images)
    cos = _cos(embeds, checker.concept_embeds)
    special = _cos(embeds, checker.special_care_embeds)
    direct = int(cos[:, 0].argmax())
    adjusted = int(np.argsort(special[:, 0])[-1 if special[:, 0].argmax() != direct else -2])
    others = np.delete(cos, adjusted, axis=0)
    gaps = cos[adjusted, 1:] - others[:, 1:].max(axis=0)
    concept = 1 + int(gaps.argmax())  # the concept where image `adjusted` stands out most
    assert gaps.max() > 0.006

    thresholds = cos.max(axis=0) + 0.05
    thresholds[0] = _midpoint_below(cos[:, 0], direct)
    thresholds[concept] = cos[adjusted, concept] + 0.005
    special_thresholds = special.max(axis=0) + 0.05
    special_thresholds[0] = _midpoint_below(special[:, 0], adjusted)
    with torch.no_grad():
        checker.concept_embeds_weights.copy_(torch.from_numpy(thresholds))
        checker.special_care_embeds_weights.copy_(torch.from_numpy(special_thresholds))
    checker.save_pretrained(folder)
    return Designed(folder=folder, direct=direct, adjusted=adjusted)


def _diffusers_verdicts(folder: Path, images: list[Image.Image]) -> list[bool]:
    checker = StableDiffusionSafetyChecker.from_pretrained(folder).eval()
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    _, has_nsfw = checker(clip_input=pixels.pixel_values, images=np.zeros((len(images), 4, 4, 3)))
    return [bool(x) for x in has_nsfw]


def test_reproduces_diffusers_verdicts_and_scores(
    designed: Designed, images: list[Image.Image]
) -> None:
    checker_folder = designed.folder
    checker = StableDiffusionSafetyChecker.from_pretrained(checker_folder)
    embeds = _image_embeds(checker, checker_folder, images)
    margins = _cos(embeds, checker.concept_embeds) - checker.concept_embeds_weights.detach().numpy()
    special = (
        _cos(embeds, checker.special_care_embeds)
        - checker.special_care_embeds_weights.detach().numpy()
    )
    adjusted = margins + 0.01 * (special > 0).any(axis=1, keepdims=True)
    # Precondition: no margin so close to 0 that SD's 3-decimal rounding could decide it.
    assert np.abs(adjusted).min() > 1e-3 and np.abs(special).min() > 1e-3

    expected = _diffusers_verdicts(checker_folder, images)
    assert [i for i, flagged in enumerate(expected) if flagged] == sorted(
        {designed.direct, designed.adjusted}
    )

    clf = ClipConceptsConfig(model=str(checker_folder)).build()
    assert isinstance(clf, ImageClassifier)
    results = clf.classify(images)
    assert [r.scores[Category.SEXUAL] >= 0.5 for r in results] == expected
    assert [r.scores[Category.MINORS] >= 0.5 for r in results] == list((special > 0).any(axis=1))
    for i, res in enumerate(results):
        assert set(res.scores) == {Category.SEXUAL, Category.MINORS}
        for j in range(17):
            want = _sigmoid(adjusted[i, j] / TEMPERATURE)
            assert res.labels[f"concept_{j}"] == pytest.approx(want, abs=1e-4)
        for j in range(3):
            want = _sigmoid(special[i, j] / TEMPERATURE)
            assert res.labels[f"special_care_{j}"] == pytest.approx(want, abs=1e-4)

    sd = SDSafetyCheckerConfig(model=str(checker_folder)).build()
    assert sd.name == "sd_safety_checker" and sd.fingerprint.startswith("sd_safety_checker:")
    sd_results = sd.classify(images)
    assert [r.scores[Category.SEXUAL] >= 0.5 for r in sd_results] == expected
    assert all(set(r.scores) == {Category.SEXUAL} for r in sd_results)


def test_special_care_adjustment_flags_the_near_miss(
    designed: Designed, images: list[Image.Image]
) -> None:
    folder = str(designed.folder)
    default = ClipConceptsConfig(model=folder).build().classify(images)
    none = ClipConceptsConfig(model=folder, adjustment=0.0).build().classify(images)
    flagged = [r.scores[Category.SEXUAL] >= 0.5 for r in default]
    flagged_without = [r.scores[Category.SEXUAL] >= 0.5 for r in none]
    assert flagged[designed.adjusted] and not flagged_without[designed.adjusted]
    assert flagged[designed.direct] and flagged_without[designed.direct]


def test_batches_equal_single_calls(designed: Designed, images: list[Image.Image]) -> None:
    clf = ClipConceptsConfig(model=str(designed.folder), batch_size=3).build()
    batched = clf.classify(images)
    for im, b in zip(images, batched, strict=True):
        (s,) = clf.classify([im])
        assert b.labels == pytest.approx(s.labels, abs=1e-5)
    assert clf.classify([]) == []


def _phrase_cos(folder: Path, phrase: str, embeds: torch.Tensor) -> np.ndarray:
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    encoder = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder")
    with torch.no_grad():
        text = encoder(**tokenizer([phrase], return_tensors="pt")).text_embeds
    return _cos(embeds, text)[:, 0]


def test_user_concept_bank(designed: Designed, images: list[Image.Image], tmp_path: Path) -> None:
    checker = StableDiffusionSafetyChecker.from_pretrained(designed.folder)
    embeds = _image_embeds(checker, designed.folder, images)
    cos_cat = _phrase_cos(designed.folder, "a photo of a cat", embeds)
    cos_war = _phrase_cos(designed.folder, "war", embeds)
    assert np.abs(cos_cat - cos_war).max() > 0.05  # the phrase matters

    threshold = float(np.median(cos_cat))
    bank = [
        Concept(phrase="a photo of a cat", category=Category.VIOLENCE, threshold=threshold),
        Concept(phrase="war", category=Category.SHOCKING, threshold=0.0),
    ]
    clf = ClipConceptsConfig(
        model=str(designed.folder), concepts=bank, include_original=False
    ).build()
    results = clf.classify(images)
    for i, res in enumerate(results):
        assert set(res.labels) == {"a photo of a cat", "war"}
        cat = _sigmoid((cos_cat[i] - threshold) / TEMPERATURE)
        assert res.scores[Category.VIOLENCE] == pytest.approx(cat, abs=1e-4)
        assert res.scores[Category.SHOCKING] == pytest.approx(_sigmoid(cos_war[i] / 0.02), abs=1e-4)
    flagged = [r.scores[Category.VIOLENCE] >= 0.5 for r in results]
    assert flagged == list(cos_cat >= threshold) and any(flagged) and not all(flagged)

    # The same text tower given as a separate `text_model` folder (files at its root).
    text_folder = tmp_path / "clip_text"
    CLIPTextModelWithProjection.from_pretrained(designed.folder / "text_encoder").save_pretrained(
        text_folder
    )
    CLIPTokenizer.from_pretrained(designed.folder / "tokenizer").save_pretrained(text_folder)
    again = ClipConceptsConfig(
        model=str(designed.folder),
        concepts=bank,
        include_original=False,
        text_model=str(text_folder),
    ).build()
    for a, r in zip(again.classify(images), results, strict=True):
        assert a.labels == pytest.approx(r.labels, abs=1e-6)
    assert again.fingerprint == clf.fingerprint


def test_user_special_care_raises_regular_concepts(
    designed: Designed, images: list[Image.Image]
) -> None:
    plain = ClipConceptsConfig(model=str(designed.folder), special_care_category=None).build()
    always = Concept(phrase="child", category=Category.MINORS, threshold=-1.0)
    cared = ClipConceptsConfig(
        model=str(designed.folder), special_care=[always], special_care_category=None
    ).build()
    for p, c in zip(plain.classify(images), cared.classify(images), strict=True):
        assert c.scores[Category.MINORS] > 0.5
        margin_p = math.log(p.labels["concept_5"] / (1 - p.labels["concept_5"])) * TEMPERATURE
        margin_c = math.log(c.labels["concept_5"] / (1 - c.labels["concept_5"])) * TEMPERATURE
        triggered = any(p.labels[f"special_care_{j}"] >= 0.5 for j in range(3))
        assert margin_c - margin_p == pytest.approx(0.0 if triggered else 0.01, abs=1e-4)


def test_fingerprint_tracks_weights(tmp_path: Path, designed: Designed) -> None:
    a = ClipConceptsConfig(model=str(designed.folder)).build().fingerprint
    assert a == ClipConceptsConfig(model=str(designed.folder)).build().fingerprint
    other = tiny_safety_checker_folder(tmp_path / "other", seed=5, with_text=False)
    assert ClipConceptsConfig(model=str(other)).build().fingerprint != a


def test_errors(tmp_path: Path) -> None:
    folder = tiny_safety_checker_folder(tmp_path / "no_text", with_text=False)
    bank = [Concept(phrase="war", category=Category.VIOLENCE, threshold=0.2)]
    with pytest.raises(OSError, match=r"text tower.*text_encoder"):
        ClipConceptsConfig(model=str(folder), concepts=bank).build()
    with pytest.raises(ValidationError, match="duplicate concept phrase"):
        ClipConceptsConfig(model="m", concepts=bank + bank)
    with pytest.raises(ValidationError, match="nothing to match"):
        ClipConceptsConfig(model="m", include_original=False)
    with pytest.raises(ValidationError, match="treshold"):
        Concept.model_validate({"phrase": "war", "category": "violence", "treshold": 0.2})
    with pytest.raises(ValidationError, match="temperature"):
        ClipConceptsConfig(model="m", temperature=0)
    with pytest.raises(ValueError, match="image 0 has zero size"):
        SDSafetyCheckerConfig(model=str(folder)).build().classify(
            [random_images(1)[0].crop((0, 0, 0, 0))]
        )
