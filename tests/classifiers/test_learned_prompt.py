"""The shipped learned prompt classifier: its features, calibration, pass-through and cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from safety_lora.classifiers.learned_prompt import (
    CERTAIN,
    CHAR_NGRAMS,
    LearnedPromptClassifier,
    LearnedPromptConfig,
    PromptModel,
    load_model,
)
from safety_lora.policies import Policy
from safety_lora.policies.engine import HARD_RULE, PolicyEngine
from safety_lora.taxonomy import Category, PromptAction


@pytest.fixture(scope="module")
def learned() -> LearnedPromptClassifier:
    return LearnedPromptConfig().build()


def test_word_and_character_features_equal_sklearns_tfidf() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer

    model, _ = load_model("bundled")
    texts = ["a woman sleeping in bed", "a bloody knife on a table", "portrait of a cat cat"]
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    words.vocabulary_, words.idf_ = model.index, model.idf.astype(np.float64)
    chars = TfidfVectorizer(analyzer="char_wb", ngram_range=CHAR_NGRAMS, sublinear_tf=True)
    chars.vocabulary_, chars.idf_ = model.char_index, model.char_idf.astype(np.float64)
    expected = np.hstack([words.transform(texts).toarray(), chars.transform(texts).toarray()])
    assert model.char_vocabulary and expected[:, len(model.vocabulary) :].any()
    for text, row in zip(texts, expected, strict=True):
        cols, vals = model.word_features(text)
        ours = np.zeros(len(model.vocabulary) + len(model.char_vocabulary))
        ours[cols] = vals
        np.testing.assert_allclose(ours, row, rtol=1e-5, atol=1e-7)


def test_a_model_file_without_character_ngrams_or_gate_still_loads() -> None:
    model, _ = load_model("bundled")
    v = len(model.vocabulary)
    empty = np.zeros(0, np.float32)
    older = replace(
        model,
        char_vocabulary=(),
        char_idf=empty,
        weight=np.delete(model.weight, np.s_[v : v + len(model.char_vocabulary)], axis=1),
        gate_weight=empty,
        gate_bias=empty,
        gate_power=empty,
    )
    again = PromptModel.from_bytes(older.to_bytes(), source="older")
    assert again.char_vocabulary == () and again.weight.shape == older.weight.shape
    assert again.gate_weight.size == 0
    words = again.word_features("a bloody knife on a table")
    assert words[0].size and words[0].max() < v
    static, rules = np.zeros(again.token_vectors.shape[1]), np.zeros(len(again.rule_categories))
    logits = (
        again.bias
        + again.weight[:, words[0]] @ words[1]
        + again.weight[:, v:] @ np.r_[static, rules]
    )
    np.testing.assert_allclose(
        again.raw(words, static, rules), 1 / (1 + np.exp(-logits)), rtol=1e-6
    )


def test_the_gate_scales_every_head_by_how_much_a_prompt_reads_like_an_image_prompt() -> None:
    model, _ = load_model("bundled")
    assert model.gate_weight.size and float(model.gate_power[0]) > 0
    ungated = replace(
        model,
        gate_weight=np.zeros(0, np.float32),
        gate_bias=np.zeros(0, np.float32),
        gate_power=np.zeros(0, np.float32),
    )
    reader = LearnedPromptClassifier(model=model, cache_size=0)
    shares = []
    for prompt in ("a bowl of fruit on a kitchen table", "a bloody corpse, trending on artstation"):
        _, words, static, rules = reader.features([prompt])[0]
        v = len(model.vocabulary) + len(model.char_vocabulary)
        gate = model.gate_bias[0] + model.gate_weight[words[0]] @ words[1]
        gate += model.gate_weight[v:] @ np.r_[static, rules]
        share = (1 + np.exp(-gate)) ** -float(model.gate_power[0])
        shares.append(share)
        np.testing.assert_allclose(
            model.raw(words, static, rules), ungated.raw(words, static, rules) * share, rtol=1e-5
        )
    caption, image_prompt = shares
    assert 0 < caption < image_prompt < 1  # a caption reads less like an image prompt
    with pytest.raises(ValueError, match=r"gate shapes .* do not fit width"):
        replace(model, gate_weight=model.gate_weight[:-1])


def test_the_model_file_round_trips_and_is_checked(tmp_path: Path) -> None:
    model, _ = load_model("bundled")
    again = PromptModel.from_bytes(model.to_bytes(), source="copy")
    assert again.vocabulary == model.vocabulary and again.categories == model.categories
    np.testing.assert_array_equal(again.weight, model.weight)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    with pytest.raises(ValueError, match=r"bad\.safetensors is not a valid safetensors file"):
        LearnedPromptConfig(model=str(bad)).build()


def test_calibration_maps_are_monotone_and_below_certain() -> None:
    model, _ = load_model("bundled")
    assert np.all(np.diff(model.calib_y, axis=1) >= 0)
    assert np.all(np.diff(model.calib_x, axis=1) > 0)
    top = model.calibrated(np.ones(len(model.categories)))
    assert np.all(top <= CERTAIN)  # a model guess never reads as an explicit term


def test_explicit_terms_pass_through_and_minors_come_from_the_rules(
    learned: LearnedPromptClassifier,
) -> None:
    custom_terms = LearnedPromptConfig(extra_terms={Category.VIOLENCE: ["zorblax"]}).build()
    porn, child, custom = custom_terms.classify(
        ["explicit porn", "a nude child", "a zorblax in a field"]
    )
    assert porn.scores[Category.SEXUAL] == 1.0
    assert child.scores[Category.MINORS] == 1.0 and child.scores[Category.SEXUAL] == 1.0
    assert custom.scores[Category.VIOLENCE] == 1.0
    engine = PolicyEngine(Policy.preset("balanced"))
    decision = engine.check_prompt("a n.u.d.e ch1ld")
    assert (decision.action, decision.rule) == (PromptAction.REFUSE, HARD_RULE)


ORDINARY = [
    "a woman sleeping in bed",
    "two girls on a bed reading",
    "a beautiful woman, portrait photo",
    "A man in green shirt holding a frisbee under a bridge.",
    "a cat on a sofa",
    "a bowl of fruit on a wooden table",
]


def test_ordinary_prompts_are_not_steered_by_the_presets() -> None:
    for preset in ("balanced", "strict"):
        engine = PolicyEngine(Policy.preset(preset))
        for prompt in ORDINARY:
            decision = engine.check_prompt(prompt)
            assert decision.action is PromptAction.ALLOW, (preset, prompt, decision.risk)


def test_unsafe_prompts_score_high_in_their_category(learned: LearnedPromptClassifier) -> None:
    gore, violence = learned.classify(
        ["a bloody corpse with entrails", "a man shooting another man in the head, blood"]
    )
    assert gore.scores[Category.SHOCKING] >= 0.8
    assert violence.scores[Category.VIOLENCE] >= 0.5
    benign = learned.classify(["a cat on a sofa"])[0]
    assert benign.scores[Category.VIOLENCE] < violence.scores[Category.VIOLENCE]


def test_recent_prompts_are_cached_and_the_cache_is_bounded() -> None:
    classifier = LearnedPromptConfig(cache_size=2).build()
    first = classifier.classify(["a cat", "a dog"])
    again = classifier.classify(["a cat"])
    assert again[0] is first[0]  # served from the cache
    classifier.classify(["a bird", "a fish"])
    assert len(classifier._cache) == 2 and "a cat" not in classifier._cache
    uncached = LearnedPromptConfig(cache_size=0).build()
    assert uncached.classify(["a cat"])[0] is not uncached.classify(["a cat"])[0]
