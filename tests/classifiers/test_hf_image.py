"""hf_image with a tiny random ViT image classifier saved in the test (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tiny_models import random_images, tiny_vit_classifier
from PIL import Image
from pydantic import ValidationError
from transformers import AutoImageProcessor, AutoModelForImageClassification

from safety_lora.classifiers.base import ImageClassifier
from safety_lora.classifiers.hf_image import HFImageConfig
from safety_lora.taxonomy import Category

LABELS = ["normal", "nsfw", "gore", "blood"]
LABEL_MAP: dict[str, Category | None] = {
    "normal": None,
    "nsfw": Category.SEXUAL,
    "gore": Category.VIOLENCE,
    "blood": Category.VIOLENCE,
}


def _reference(folder: Path, images: list[Image.Image], *, sigmoid: bool) -> torch.Tensor:
    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**processor(images=images, return_tensors="pt")).logits
    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("problem_type", [None, "multi_label_classification"])
def test_scores_are_max_probability_per_category(tmp_path: Path, problem_type: str | None) -> None:
    folder = tiny_vit_classifier(tmp_path / "vit", labels=LABELS, problem_type=problem_type)
    images = random_images(5, seed=3)
    probs = _reference(folder, images, sigmoid=problem_type is not None)
    if problem_type is None:
        assert torch.allclose(probs.sum(dim=-1), torch.ones(5))
    else:
        assert not torch.allclose(probs.sum(dim=-1), torch.ones(5), atol=1e-2)

    clf = HFImageConfig(model=str(folder), labels=LABEL_MAP, batch_size=2).build()
    assert isinstance(clf, ImageClassifier)
    results = clf.classify(images)
    assert len(results) == 5
    for row, res in zip(probs.tolist(), results, strict=True):
        assert res.labels == pytest.approx(dict(zip(LABELS, row, strict=True)), abs=1e-5)
        assert set(res.scores) == {Category.SEXUAL, Category.VIOLENCE}
        assert res.scores[Category.SEXUAL] == pytest.approx(row[1], abs=1e-5)
        assert res.scores[Category.VIOLENCE] == pytest.approx(max(row[2], row[3]), abs=1e-5)
    # Not a constant: the tiny model separates the images.
    assert len({round(r.scores[Category.SEXUAL], 4) for r in results}) > 1


def test_batches_equal_single_calls_and_modes(tmp_path: Path) -> None:
    folder = tiny_vit_classifier(tmp_path / "vit", labels=LABELS)
    clf = HFImageConfig(model=str(folder), labels=LABEL_MAP, batch_size=3).build()
    images = random_images(4, seed=4)
    batched = clf.classify(images)
    for im, b in zip(images, batched, strict=True):
        assert clf.classify([im])[0].labels == pytest.approx(b.labels, abs=1e-5)
    gray = images[0].convert("L")
    assert clf.classify([gray])[0].labels == pytest.approx(
        clf.classify([gray.convert("RGB")])[0].labels
    )
    assert clf.classify([]) == []


def test_fingerprint_tracks_weights(tmp_path: Path) -> None:
    a = tiny_vit_classifier(tmp_path / "a", labels=LABELS, seed=0)
    b = tiny_vit_classifier(tmp_path / "b", labels=LABELS, seed=1)
    fa = HFImageConfig(model=str(a), labels=LABEL_MAP).build().fingerprint
    assert fa.startswith("hf_image:") and len(fa) == len("hf_image:") + 16
    assert fa == HFImageConfig(model=str(a), labels=LABEL_MAP).build().fingerprint
    assert fa != HFImageConfig(model=str(b), labels=LABEL_MAP).build().fingerprint


def test_label_map_errors_name_the_labels(tmp_path: Path) -> None:
    folder = str(tiny_vit_classifier(tmp_path / "vit", labels=LABELS))
    partial = {k: v for k, v in LABEL_MAP.items() if k != "blood"}
    with pytest.raises(
        ValueError, match=r"unknown label\(s\) \[\], unmapped label\(s\) \['blood'\]"
    ):
        HFImageConfig(model=folder, labels=partial).build()
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['porn'\]"):
        HFImageConfig(model=folder, labels={**LABEL_MAP, "porn": Category.SEXUAL}).build()
    with pytest.raises(ValidationError, match="labels"):
        HFImageConfig(model=folder, labels={})
    with pytest.raises(ValidationError, match="nsfw"):
        HFImageConfig(model=folder, labels={"nsfw": "nudity"})  # type: ignore[dict-item]
    clf = HFImageConfig(model=folder, labels=LABEL_MAP).build()
    with pytest.raises(ValueError, match="image 0 has zero size"):
        clf.classify([random_images(1)[0].crop((0, 0, 0, 0))])


def test_half_precision_checkpoint_runs_on_float32_inputs(tmp_path: Path) -> None:
    folder = tiny_vit_classifier(tmp_path / "vit", labels=LABELS)
    half = tmp_path / "vit16"
    AutoModelForImageClassification.from_pretrained(folder).half().save_pretrained(half)
    AutoImageProcessor.from_pretrained(folder).save_pretrained(half)
    images = random_images(3, seed=5)
    full = HFImageConfig(model=str(folder), labels=LABEL_MAP).build().classify(images)
    low = HFImageConfig(model=str(half), labels=LABEL_MAP).build().classify(images)
    for f, h in zip(full, low, strict=True):
        assert h.labels == pytest.approx(f.labels, abs=1e-2)
