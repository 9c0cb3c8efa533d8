"""Engine decisions for every action, the hard rule, fail-closed errors and steering strengths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from safety_lora.classifiers.base import ImageScores, Region
from safety_lora.imaging import render
from safety_lora.policies import Policy, PolicyEngine
from safety_lora.policies.engine import HARD_RULE
from safety_lora.taxonomy import Action, Category, PromptAction

#: Every category the test policies act on, at score 0: a static classifier that scores them.
ZERO = dict.fromkeys(("sexual", "violence", "shocking", "hate", "harassment"), 0.0)


def engine_for(
    image_scores: dict[str, float] | list[dict[str, float]], **extra: Any
) -> PolicyEngine:
    sequence = image_scores if isinstance(image_scores, list) else [image_scores]
    data: dict[str, Any] = {
        "version": 1,
        "classifiers": [{"kind": "static", "sequence": [{**ZERO, **s} for s in sequence]}],
        "categories": {
            "sexual": {"threshold": 0.5, "action": "regenerate"},
            "violence": {"threshold": 0.5, "action": "blur"},
            "shocking": {"threshold": 0.5, "action": "replace"},
            "hate": {"threshold": 0.5, "action": "block"},
            "harassment": {"threshold": 0.5, "action": "allow"},
        },
        "escalation": {"max_attempts": 2, "final_action": "replace"},
    }
    data.update(extra)
    return PolicyEngine(Policy.from_dict(data))


def image(colour: tuple[int, int, int] = (200, 30, 30)) -> Image.Image:
    return Image.new("RGB", (64, 48), colour)


@pytest.mark.parametrize(
    ("scores", "action", "rule"),
    [
        ({}, Action.ALLOW, "allow"),
        ({"sexual": 0.49}, Action.ALLOW, "allow"),
        ({"harassment": 0.9}, Action.ALLOW, "allow"),
        ({"sexual": 0.5}, Action.REGENERATE, "categories.sexual"),
        ({"violence": 0.7}, Action.BLUR, "categories.violence"),
        ({"shocking": 0.7}, Action.REPLACE, "categories.shocking"),
        ({"hate": 0.7}, Action.BLOCK, "categories.hate"),
        ({"violence": 0.9, "hate": 0.6}, Action.BLOCK, "categories.hate"),  # most severe wins
        ({"minors": 0.9}, Action.ALLOW, "allow"),
        ({"minors": 0.6, "sexual": 0.6}, Action.BLOCK, HARD_RULE),
    ],
)
def test_image_actions(scores: dict[str, float], action: Action, rule: str) -> None:
    (decision,) = engine_for(scores).judge([image()])
    assert decision.action is action
    assert decision.rule == rule
    assert decision.scores == {Category(k): v for k, v in {**ZERO, **scores}.items()}
    assert decision.flagged is (action is not Action.ALLOW)


def test_hard_rule_ignores_a_lax_sexual_threshold() -> None:
    engine = engine_for(
        {"minors": 0.5, "sexual": 0.55},
        categories={"sexual": {"threshold": 0.99, "action": "allow"}},
    )
    (decision,) = engine.judge([image()])
    assert decision.action is Action.BLOCK
    assert decision.rule == HARD_RULE


def test_regenerate_becomes_final_action_on_last_attempt() -> None:
    engine = engine_for({"sexual": 0.9})
    assert engine.judge([image()], attempt=1)[0].action is Action.REGENERATE
    last = engine.judge([image()], attempt=2)[0]
    assert last.action is Action.REPLACE
    assert last.rule == "escalation.final_action"
    assert last.attempts == 2


def test_each_image_in_a_batch_is_judged_on_its_own() -> None:
    engine = engine_for([{"sexual": 0.0}, {"hate": 0.9}, {"sexual": 0.1}])
    actions = [d.action for d in engine.judge([image(), image(), image()])]
    assert actions == [Action.ALLOW, Action.BLOCK, Action.ALLOW]


class Broken:
    name = "broken"
    fingerprint = "broken:0"

    def classify(self, images: Sequence[Image.Image]) -> list[ImageScores]:
        raise RuntimeError("model exploded")


class Short:
    name = "short"
    fingerprint = "short:0"

    def classify(self, images: Sequence[Image.Image]) -> list[ImageScores]:
        return []


@pytest.mark.parametrize(
    ("classifier", "message"), [(Broken(), "model exploded"), (Short(), "returned 0 results")]
)
def test_failing_classifier_fails_closed(classifier: Any, message: str) -> None:
    engine = engine_for({})
    engine.image_classifiers.append(classifier)
    (decision,) = engine.judge([image()])
    assert decision.action is Action.BLOCK  # on_error default
    assert decision.rule == "on_error"
    assert message in decision.errors[0]


def test_out_of_range_score_is_an_error_not_a_pass() -> None:
    engine = engine_for({"sexual": float("nan")}, on_error="replace")
    (decision,) = engine.judge([image()])
    assert decision.action is Action.REPLACE
    assert "outside 0..1" in decision.errors[0]


def test_apply_blur_regions_and_whole() -> None:
    engine = engine_for({"violence": 0.9})
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    (decision,) = engine.judge([noisy])
    whole = np.asarray(render(noisy, decision, engine.policy.blur), dtype=float)
    assert whole.std() < np.asarray(noisy, dtype=float).std() / 2
    boxed = decision.__class__(
        **{**decision.__dict__, "regions": (Region((0, 0, 16, 16), "x", 0.9, Category.VIOLENCE),)}
    )
    part = np.asarray(render(noisy, boxed, engine.policy.blur), dtype=float)
    original = np.asarray(noisy, dtype=float)
    assert np.array_equal(part[40:, 40:], original[40:, 40:])  # far from the box: untouched
    assert not np.array_equal(part[:8, :8], original[:8, :8])


@pytest.mark.parametrize(
    ("scores", "word"), [({"shocking": 0.9}, "replaced"), ({"hate": 0.9}, "blocked")]
)
def test_replace_and_block_give_an_explained_placeholder(
    scores: dict[str, float], word: str
) -> None:
    engine = engine_for(scores)
    original = image()
    (decision,) = engine.judge([original])
    rendered = render(original, decision, engine.policy.blur)
    out = np.asarray(rendered)
    assert out.shape == (48, 64, 3)
    assert out.max() > 200  # light text on grey: not a black square
    assert (out == 128).mean() > 0.5
    assert rendered.info["safety_lora"] == f"{word} by safety policy"


def test_allow_returns_the_image_unchanged() -> None:
    engine = engine_for({})
    original = image()
    (decision,) = engine.judge([original])
    assert render(original, decision, engine.policy.blur) is original


def prompt_engine(
    scores: dict[str, float], rules: dict[str, Any] | None = None, **kw: Any
) -> PolicyEngine:
    data: dict[str, Any] = {
        "version": 1,
        "classifiers": [{"kind": "static", "scores": ZERO}],
        "prompt": {
            "classifiers": [{"kind": "static", "scores": {**ZERO, **scores}}],
            "rules": rules or {},
        },
    }
    data.update(kw)
    return PolicyEngine(Policy.from_dict(data))


def test_prompt_decisions() -> None:
    assert prompt_engine({}).check_prompt("x").action is PromptAction.ALLOW
    steer = prompt_engine({"violence": 0.85}).check_prompt("x")  # default steer_at: 0.8
    assert steer.action is PromptAction.STEER
    assert prompt_engine({"violence": 0.4}).check_prompt("x").action is PromptAction.ALLOW
    assert steer.rule == "prompt.rules.violence.steer_at"
    refuse = prompt_engine({"sexual": 0.9}, {"sexual": {"refuse_at": 0.8}}).check_prompt("x")
    assert refuse.action is PromptAction.REFUSE
    assert refuse.rule == "prompt.rules.sexual.refuse_at"
    hard = prompt_engine({"sexual": 0.6, "minors": 0.7}).check_prompt("x")
    assert (hard.action, hard.rule) == (PromptAction.REFUSE, HARD_RULE)


def test_refused_prompt_gives_block_decisions() -> None:
    engine = prompt_engine({"sexual": 0.6, "minors": 0.7})
    pd = engine.check_prompt("x", request_id="r1")
    decisions = engine.refused(pd, 2)
    assert [d.action for d in decisions] == [Action.BLOCK, Action.BLOCK]
    assert decisions[0].request_id == "r1"
    assert decisions[0].attempts == 0


def test_steering_scales_follow_risk_ladder_and_cap(tmp_path: Path) -> None:
    steering = {
        "adapters": [
            {
                "path": str(tmp_path / "a.safetensors"),
                "categories": ["sexual"],
                "scale": 0.5,
                "risk_boost": 1.0,
                "max_scale": 1.6,
            },
            {"path": str(tmp_path / "b.safetensors"), "categories": ["violence"], "scale": 1.0},
        ]
    }
    engine = prompt_engine({"sexual": 0.4}, steering=steering)
    pd = engine.check_prompt("x")
    assert engine.steering_scales(None) == {"a": 0.5, "b": 1.0}
    assert engine.steering_scales(pd) == pytest.approx({"a": 0.9, "b": 1.0})
    assert engine.steering_scales(pd, attempt=2) == pytest.approx({"a": 1.35, "b": 1.5})
    assert engine.steering_scales(pd, attempt=3) == pytest.approx({"a": 1.6, "b": 2.0})


def test_failing_prompt_classifier_refuses() -> None:
    engine = prompt_engine({})

    class Boom:
        name, fingerprint = "boom", "boom:0"

        def classify(self, prompts: Sequence[str]) -> list[Any]:
            raise ValueError("bad rules")

    engine.prompt_classifiers.append(Boom())
    pd = engine.check_prompt("hello")
    assert (pd.action, pd.rule) == (PromptAction.REFUSE, "on_error")
    assert "bad rules" in pd.errors[0]


def test_every_decision_lists_what_the_policy_does_not_judge(tmp_path: Path) -> None:
    engine = engine_for({"sexual": 0.1})  # the static classifier scores five categories
    (decision,) = engine.judge([image()])
    assert decision.unjudged == (Category.SELF_HARM, Category.ILLEGAL_ACTIVITY, Category.MINORS)
    assert decision.to_dict()["unjudged"] == ["self_harm", "illegal_activity", "minors"]
    pd = prompt_engine({"sexual": 0.1}).check_prompt("x")
    assert set(pd.unjudged) == {Category.SELF_HARM, Category.ILLEGAL_ACTIVITY, Category.MINORS}
    (refused,) = engine.refused(pd, 1)
    assert refused.unjudged == decision.unjudged
    nudenet = PolicyEngine(Policy.preset("balanced")).judge  # builds nudenet: scores sexual
    assert Category.SEXUAL not in nudenet([image()])[0].unjudged


@pytest.mark.parametrize(
    ("sexual_at", "minors", "sexual", "fires"),
    [
        (None, 0.5, 0.5, True),  # no own threshold: 0.5
        (None, 0.5, 0.49, False),
        (0.9, 0.5, 0.5, True),  # a laxer own threshold is capped at 0.5
        (0.3, 0.5, 0.3, True),  # a stricter one makes the rule stricter
        (0.3, 0.49, 0.9, False),
    ],
)
def test_hard_rule_has_one_semantics_for_prompts_and_images(
    sexual_at: float | None, minors: float, sexual: float, fires: bool
) -> None:
    scores = {"minors": minors, "sexual": sexual}
    categories: dict[str, Any] = {"minors": {"threshold": 0.5, "action": "allow"}}
    if sexual_at is not None:
        categories["sexual"] = {"threshold": sexual_at, "action": "allow"}
    images = engine_for(scores, categories=categories)
    (decision,) = images.judge([image()])
    rules = {} if sexual_at is None else {"sexual": {"steer_at": None, "refuse_at": sexual_at}}
    prompt = {"classifiers": [{"kind": "static", "scores": scores}], "rules": rules}
    prompts = engine_for({}, prompt=prompt)
    checked = prompts.check_prompt("any prompt")
    assert (decision.rule == HARD_RULE) is fires
    assert (checked.rule == HARD_RULE) is fires
    if fires:
        assert checked.refused and decision.action is Action.BLOCK
        assert decision.reasons[0].endswith("never allowed")
