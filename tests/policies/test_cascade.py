"""Cascades: an image classifier with ``when`` runs only on the images an earlier stage scored
in its band (or left a category unjudged), and every decision records which stages ran."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from safety_lora.classifiers.base import ImageClassifier, ImageScores
from safety_lora.classifiers.static import StaticImageClassifier
from safety_lora.guard import SafetyGuard
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy, PolicyError
from safety_lora.service.openai_moderation import moderate
from safety_lora.taxonomy import Action, Category

RED, BLUE, GREEN = (215, 35, 35), (40, 70, 220), (40, 180, 50)
CHEAP: dict[str, Any] = {"kind": "concept_world", "unsafe": {"sexual": ["red"]}}


def picture(colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((8, 8, 24, 24), fill=colour)
    return image


def policy(*stages: dict[str, Any], **rest: Any) -> Policy:
    rest.setdefault("categories", {"sexual": {"threshold": 0.5, "action": "block"}})
    return Policy.from_dict({"classifiers": list(stages), **rest})


class Recording:
    """Wraps a classifier and keeps the images it was given."""

    def __init__(self, inner: ImageClassifier) -> None:
        self.inner, self.name, self.fingerprint = inner, inner.name, inner.fingerprint
        self.seen: list[Image.Image] = []

    def classify(self, images: Sequence[Image.Image]) -> list[ImageScores]:
        self.seen.extend(images)
        return self.inner.classify(images)


def test_a_stage_runs_only_on_images_in_its_band_and_decisions_say_so() -> None:
    judge = {
        "kind": "static",
        "scores": {"violence": 0.9},
        "when": {"category": "sexual", "between": [0.5, 1.0]},
    }
    p = policy(CHEAP, judge, categories={"violence": {"threshold": 0.5, "action": "blur"}})
    built = [c.build() for c in p.classifiers]
    expensive = Recording(built[1])
    engine = PolicyEngine(p, image_classifiers=[built[0], expensive])
    images = [picture(RED), picture(BLUE), picture(RED), picture(GREEN)]
    red, blue, red2, green = engine.judge(images)
    assert expensive.seen == [images[0], images[2]]  # the red ones only, in one call
    for flagged in (red, red2):
        assert flagged.stages == ("concept_world", "static")
        assert flagged.scores == {Category.SEXUAL: 1.0, Category.VIOLENCE: 0.9}
        assert flagged.action is Action.BLUR and Category.VIOLENCE not in flagged.unjudged
    for skipped in (blue, green):
        assert skipped.stages == ("concept_world",)
        assert skipped.scores == {Category.SEXUAL: 0.0}
        assert skipped.action is Action.ALLOW
        assert Category.VIOLENCE in skipped.unjudged  # said, never a silent 0
    assert red.to_dict()["stages"] == ["concept_world", "static"]
    assert blue.to_dict()["unjudged"][0] == "violence"


def test_band_ends_are_included() -> None:
    first = {"kind": "static", "sequence": [{"sexual": s} for s in (0.2, 0.8, 0.19, 0.81)]}
    second = {
        "kind": "static",
        "scores": {"sexual": 0.0},
        "when": {"category": "sexual", "between": [0.2, 0.8]},
    }
    decisions = PolicyEngine(policy(first, second)).judge([picture(RED)] * 4)
    assert [len(d.stages) for d in decisions] == [2, 2, 1, 1]
    assert [d.stages[-1] for d in decisions[:2]] == ["static#2", "static#2"]  # names unique


def test_unjudged_stage_fills_in_where_an_earlier_stage_was_skipped() -> None:
    confirm = {
        "kind": "static",
        "scores": {"violence": 0.1},
        "when": {"category": "sexual", "between": [0.5, 1.0]},
    }
    fallback = {"kind": "static", "scores": {"violence": 0.2}, "when": {"unjudged": True}}
    p = policy(CHEAP, confirm, fallback)
    red, blue = PolicyEngine(p).judge([picture(RED), picture(BLUE)])
    assert red.stages == ("concept_world", "static")
    assert blue.stages == ("concept_world", "static#2")
    assert (red.scores[Category.VIOLENCE], blue.scores[Category.VIOLENCE]) == (0.1, 0.2)
    assert Category.VIOLENCE not in red.unjudged and Category.VIOLENCE not in blue.unjudged


def test_a_band_on_a_category_whose_stage_was_skipped_runs_the_stage() -> None:
    skipped = {
        "kind": "static",
        "scores": {"violence": 0.9},
        "when": {"category": "sexual", "between": [0.5, 1.0]},
    }
    on_violence = {
        "kind": "static",
        "scores": {"shocking": 0.3},
        "when": {"category": "violence", "between": [0.5, 1.0]},
    }
    p = policy(CHEAP, skipped, on_violence)
    (blue,) = PolicyEngine(p).judge([picture(BLUE)])
    assert blue.stages == ("concept_world", "static#2")  # no evidence on violence: judged


def test_cascade_verdicts_equal_running_every_stage_where_the_band_covers_the_disagreement() -> (
    None
):
    precise = {"kind": "concept_world", "unsafe": {"sexual": ["red circle"]}}
    band = {"when": {"category": "sexual", "between": [0.5, 1.0]}}
    images = [picture(c) for c in (RED, BLUE, GREEN, RED, BLUE)]
    every = PolicyEngine(policy(CHEAP, precise)).judge(images)
    cascade = PolicyEngine(policy(CHEAP, {**precise, **band})).judge(images)
    assert [d.action for d in cascade] == [d.action for d in every]
    assert [d.scores for d in cascade] == [d.scores for d in every]
    assert sum(len(d.stages) for d in cascade) == 5 + 2  # the judge ran on the 2 red images
    # a judge that flags what the cheap stage passes (blue) disagrees outside the band
    blue_too = {"kind": "concept_world", "unsafe": {"sexual": ["red", "blue"]}}
    every = PolicyEngine(policy(CHEAP, blue_too)).judge(images)
    cascade = PolicyEngine(policy(CHEAP, {**blue_too, **band})).judge(images)
    differ = [
        i for i, (a, b) in enumerate(zip(every, cascade, strict=True)) if a.action != b.action
    ]
    assert differ == [1, 4]


def test_timings_name_the_stages_that_ran() -> None:
    judge = {
        "kind": "static",
        "scores": {"sexual": 0.0},
        "when": {"category": "sexual", "between": [0.5, 1.0]},
    }
    (blue,) = PolicyEngine(policy(CHEAP, judge)).judge([picture(BLUE)])
    assert set(blue.timings_ms) == {"concept_world"}  # the judge never ran in this call


def test_other_classifiers_serving_the_policy_run_every_stage() -> None:
    judge = {
        "kind": "static",
        "scores": {"violence": 0.9},
        "when": {"category": "sexual", "between": [0.5, 1.0]},
    }
    p = policy(CHEAP, judge)
    (alone,) = PolicyEngine(p).judge([picture(BLUE)])
    assert alone.stages == ("concept_world",)
    extra = StaticImageClassifier(sequence=[{Category.HATE: 0.0}], name="extra")
    engine = PolicyEngine(p, image_classifiers=[c.build() for c in p.classifiers] + [extra])
    (blue,) = engine.judge([picture(BLUE)])  # no routing without one classifier per stage
    assert blue.stages == ("concept_world", "static", "extra")


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [{**CHEAP, "when": {"unjudged": True}}],
            "classifiers[0].when: the first classifier has no earlier one to route on",
        ),
        (
            [CHEAP, {**CHEAP, "when": {"category": "violence", "between": [0.2, 0.8]}}],
            "classifiers[1].when.category: violence is scored by no earlier classifier "
            "(they score: sexual): the stage could never run",
        ),
        (
            [CHEAP, {**CHEAP, "when": {"unjudged": True}}],
            "classifiers[1].when.unjudged: every category it scores (sexual) is judged on every "
            "image by an earlier classifier: the stage could never run",
        ),
        (
            [CHEAP, {**CHEAP, "when": {"category": "sexual", "between": [0.2, 1.5]}}],
            "classifiers.1.when.between.1: Input should be less than or equal to 1",
        ),
        (
            [CHEAP, {**CHEAP, "when": {"category": "sexual", "between": [0.8, 0.2]}}],
            "`between` must be [low, high] with low <= high, got [0.8, 0.2]",
        ),
        (
            [CHEAP, {**CHEAP, "when": {"category": "sexual"}}],
            "`category` and `between` go together",
        ),
        (
            [CHEAP, {**CHEAP, "when": {"unjudged": True, "category": "sexual"}}],
            "give `category` with `between` (a band of an earlier stage's score) or "
            "`unjudged: true`, one of the two",
        ),
    ],
)
def test_a_when_that_could_never_hold_is_an_error(
    stages: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        policy(*stages)
    assert message in str(info.value)


def test_prompt_classifiers_take_no_when() -> None:
    prompt = {
        "classifiers": [{"kind": "static", "scores": {"sexual": 0.0}, "when": {"unjudged": True}}]
    }
    with pytest.raises(PolicyError, match=r"prompt.classifiers\[0\].when: every prompt"):
        policy(CHEAP, prompt=prompt)


def test_moderation_reports_what_the_guard_judged_on_each_image() -> None:
    guard_scores = {"violence": 0.7, "shocking": 0.9, "self_harm": 0.1, "illegal_activity": 0.6}
    judge = {
        "kind": "static",
        "scores": guard_scores,
        "when": {"category": "sexual", "between": [0.5, 1.0]},
    }
    p = policy(CHEAP, judge, categories={"violence": {"threshold": 0.5, "action": "blur"}})
    guard = SafetyGuard(p)
    red = moderate(guard, [("image", picture(RED))], request_id="r")
    for name, score in [
        ("violence", 0.7),
        ("violence/graphic", 0.9),
        ("self-harm", 0.1),
        ("illicit", 0.6),
    ]:
        assert red["category_applied_input_types"][name] == ["image"]
        assert red["category_scores"][name] == score
    assert red["categories"]["violence"] is True
    assert red["categories"]["violence/graphic"] is False  # the policy does not act on it
    assert red["safety_lora"]["parts"][0]["stages"] == ["concept_world", "static"]
    blue = moderate(guard, [("image", picture(BLUE))], request_id="b")  # the guard skipped it
    for name in ("violence", "violence/graphic", "self-harm", "illicit"):
        assert blue["category_applied_input_types"][name] == []
        assert name in blue["safety_lora"]["unjudged"]
    assert blue["category_applied_input_types"]["sexual"] == ["image"]


def _guard_blocks(text: str) -> list[str]:
    """The commented-out ``vlm_guard`` entries of a preset, uncommented."""
    found: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("  # - kind: vlm_guard"):
            found.append([])
        elif not (found and line.startswith("  #   ")):
            continue
        found[-1].append("  " + line[4:])
    return ["\n".join(block) for block in found]


@pytest.mark.parametrize("name", ["strict", "balanced", "permissive"])
def test_the_presets_commented_guards_validate_once_uncommented(name: str) -> None:
    import yaml

    from safety_lora.classifiers.vlm_guard import LICENCES, VLMGuardConfig

    path = Path(__file__).resolve().parents[2] / "policies" / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    blocks = _guard_blocks(text)
    assert [yaml.safe_load(b)[0]["family"] for b in blocks] == [
        "shieldgemma2",
        "llavaguard",
        "llama_guard",
    ]
    for licence in ("Gemma Terms of Use", "LlavaGuard's terms of use", "Llama 4 Community License"):
        assert licence in text and any(licence.split(" (")[0] in v for v in LICENCES.values())
    anchor = "  - kind: nudenet\n"
    for block in blocks:
        data = yaml.safe_load(text.replace(anchor, anchor + block + "\n", 1))
        judged = VLMGuardConfig.model_validate(data["classifiers"][1]).categories()
        data["unjudged"] = [c for c in data.get("unjudged", []) if c not in judged]
        loaded = Policy.from_dict(data, source=path)
        assert loaded.classifiers[1].kind == "vlm_guard"
