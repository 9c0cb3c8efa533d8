"""NudeNet backend on real photos bundled in scikit-image's wheel (no downloads)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nudenet")
skimage_data = pytest.importorskip("skimage.data")

from safety_lora.classifiers.base import ImageClassifier  # noqa: E402
from safety_lora.classifiers.nudenet import NudeNetClassifier, NudeNetConfig  # noqa: E402
from safety_lora.taxonomy import Category  # noqa: E402

DATA = Path(skimage_data.__file__).parent
# Photographs shipped inside the scikit-image wheel (not the pooch-fetched ones).
PHOTOS = [
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "camera.png",
    "hubble_deep_field.jpg",
    "moon.png",
    "coins.png",
]


@pytest.fixture(scope="module")
def clf() -> NudeNetClassifier:
    return NudeNetConfig().build()


def _open(name: str) -> Image.Image:
    with Image.open(DATA / name) as im:
        im.load()
        return im


def test_is_an_image_classifier(clf: NudeNetClassifier) -> None:
    assert isinstance(clf, ImageClassifier)
    assert clf.name == "nudenet"
    assert clf.fingerprint.startswith("nudenet:") and len(clf.fingerprint) == len("nudenet:") + 16


def test_real_photos_are_not_flagged(clf: NudeNetClassifier) -> None:
    results = clf.classify([_open(n) for n in PHOTOS])
    assert len(results) == len(PHOTOS)
    for name, res in zip(PHOTOS, results, strict=True):
        assert res.scores[Category.SEXUAL] < 0.5, (name, res)


def test_matches_nudenet_reading_the_file_itself(clf: NudeNetClassifier) -> None:
    """NudeNet's own path reader (cv2.imread, BGR) is the reference for channel order."""
    from nudenet import NudeDetector

    raw = NudeDetector()
    for name in ["astronaut.png", "coffee.png", "camera.png"]:
        expected = raw.detect(str(DATA / name))
        (ours,) = clf.classify([_open(name)])
        assert [(r.label, pytest.approx(r.score, abs=1e-6)) for r in ours.regions] == [
            (d["class"], d["score"]) for d in expected
        ], name


def test_channel_swapped_input_differs(clf: NudeNetClassifier) -> None:
    """coffee.png: nothing in the right order; swapping R and B yields a detection."""
    coffee = _open("coffee.png")
    swapped = Image.fromarray(np.asarray(coffee)[:, :, ::-1].copy())
    right, wrong = clf.classify([coffee, swapped])
    assert right.labels == {}
    assert wrong.labels != {}


def test_batches_equal_single_calls(clf: NudeNetClassifier) -> None:
    one_thread = NudeNetClassifier(batch_size=3, threads=1)
    images = [_open(n) for n in ["astronaut.png", "camera.png", "coffee.png", "moon.png"]]
    batched = one_thread.classify(images)
    single = [clf.classify([im])[0] for im in images]
    for b, s in zip(batched, single, strict=True):
        assert b.scores == pytest.approx(s.scores, abs=1e-5)
        assert b.labels == pytest.approx(s.labels, abs=1e-5)
        assert [r.box for r in b.regions] == [r.box for r in s.regions]
    assert one_thread.classify([]) == []


def test_boxes_are_pixel_coordinates_inside_the_image(clf: NudeNetClassifier) -> None:
    images = [_open(n) for n in ["astronaut.png", "camera.png", "moon.png"]]
    results = clf.classify(images)
    assert any(res.regions for res in results)
    for im, res in zip(images, results, strict=True):
        for region in res.regions:
            x0, y0, x1, y1 = region.box
            assert 0 <= x0 < x1 <= im.width and 0 <= y0 < y1 <= im.height, region
    face = next(r for r in results[0].regions if r.label == "FACE_FEMALE")
    # The astronaut's face sits in the upper middle of the 512x512 picture.
    assert 150 < face.box[0] < 250 and 50 < face.box[1] < 150
    assert face.category is None


def test_mapped_label_scores_its_category(clf: NudeNetClassifier) -> None:
    """skimage's synthetic colour wheel is a known NudeNet false positive (BUTTOCKS_EXPOSED)."""
    wheel = Image.fromarray(skimage_data.colorwheel())
    (res,) = clf.classify([wheel])
    assert res.labels["BUTTOCKS_EXPOSED"] > 0.5
    assert res.scores[Category.SEXUAL] == res.labels["BUTTOCKS_EXPOSED"]
    assert {r.category for r in res.regions if r.label == "BUTTOCKS_EXPOSED"} == {Category.SEXUAL}

    unmapped = NudeNetConfig(label_map={"BUTTOCKS_EXPOSED": None}).build()
    (res2,) = unmapped.classify([wheel])
    assert res2.scores[Category.SEXUAL] == 0.0
    assert res2.labels == res.labels


def test_label_map_override_and_min_score(clf: NudeNetClassifier) -> None:
    astronaut = _open("astronaut.png")
    (base,) = clf.classify([astronaut])
    face = base.labels["FACE_FEMALE"]
    assert base.scores == {Category.SEXUAL: 0.0}

    remapped = NudeNetConfig(label_map={"FACE_FEMALE": Category.HARASSMENT}).build()
    (res,) = remapped.classify([astronaut])
    assert res.scores[Category.HARASSMENT] == face
    assert res.scores[Category.SEXUAL] == 0.0

    strict = NudeNetConfig(min_score=min(1.0, face + 0.01)).build()
    (res,) = strict.classify([astronaut])
    assert "FACE_FEMALE" not in res.labels and not res.regions


def test_grayscale_and_rgba_inputs(clf: NudeNetClassifier) -> None:
    camera = _open("camera.png")
    assert camera.mode == "L"
    gray, rgb = clf.classify([camera, camera.convert("RGB")])
    assert gray.labels == rgb.labels
    rgba = clf.classify([_open("astronaut.png").convert("RGBA")])[0]
    assert "FACE_FEMALE" in rgba.labels


def test_zero_size_and_corrupt_images_give_clear_errors(clf: NudeNetClassifier) -> None:
    with pytest.raises(ValueError, match=r"image 1 has zero size \(0, 0\)"):
        clf.classify([_open("coins.png"), Image.new("RGB", (0, 0))])

    buf = io.BytesIO()
    _open("coins.png").save(buf, format="PNG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))
    with pytest.raises(ValueError, match="image 0 cannot be decoded"):
        clf.classify([truncated])

    with pytest.raises(TypeError, match=r"image 0 must be a PIL\.Image"):
        clf.classify([np.zeros((8, 8, 3), np.uint8)])  # type: ignore[list-item]


def test_config_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"unknown NudeNet label.*'BREAST'"):
        NudeNetConfig(label_map={"BREAST": Category.SEXUAL})
    with pytest.raises(ValueError, match="batch_size"):
        NudeNetConfig(batch_size=0)
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        NudeNetConfig(model_path="nope.onnx").build()


def test_missing_nudenet_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)  # makes `import nudenet` fail
    with pytest.raises(ImportError, match=r'pip install "safety-lora\[nudenet\]".*AGPL-3\.0'):
        NudeNetConfig().build()
