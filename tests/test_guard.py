"""SafetyGuard: prompt checks, image review, and the sync/async generate() wrapper."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from safety_lora.audit import read_audit_log
from safety_lora.guard import PromptRefused, SafetyGuard
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy
from safety_lora.taxonomy import Action, PromptAction

GREY = (128, 128, 128)
RED = (255, 0, 0)


def make_guard(
    tmp_path: Path, *, sexual: float, action: str = "replace", **extra: Any
) -> SafetyGuard:
    policy = Policy.from_dict(
        {
            "name": "guard-test",
            "categories": {"sexual": {"threshold": 0.5, "action": action}},
            "classifiers": [{"kind": "static", "scores": {"sexual": sexual}}],
            "prompt": {
                "classifiers": [{"kind": "prompt_rules", "extra_terms": {"violence": ["zorblax"]}}],
                "rules": {"violence": {"steer_at": 0.3, "refuse_at": 0.8}},
            },
            "audit": {"path": str(tmp_path / "audit.jsonl")},
            **extra,
        }
    )
    return SafetyGuard(policy)


def red() -> Image.Image:
    return Image.new("RGB", (16, 16), RED)


def test_check_prompt_is_audited(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, sexual=0.0)
    allowed = guard.check_prompt("a cat", request_id="r1")
    refused = guard.check_prompt("a zorblax", request_id="r2")
    assert allowed.action is PromptAction.ALLOW
    assert refused.action is PromptAction.REFUSE
    records = read_audit_log(tmp_path / "audit.jsonl")
    assert [(r["kind"], r["request_id"], r["action"]) for r in records] == [
        ("prompt", "r1", "allow"),
        ("prompt", "r2", "refuse"),
    ]
    assert "prompt_text" not in records[0]  # only the hash unless the policy opts in


def test_review_and_moderate(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, sexual=0.9)
    decisions = guard.review([red(), red()], prompt="a cat", request_id="rid")
    assert [d.action for d in decisions] == [Action.REPLACE, Action.REPLACE]
    assert {d.request_id for d in decisions} == {"rid"}
    result = guard.moderate([red()])
    assert result.nsfw_content_detected == [True]
    assert result.images[0].getpixel((0, 0)) == GREY
    assert len(read_audit_log(tmp_path / "audit.jsonl")) == 3
    assert guard.review([]) == []
    with pytest.raises(TypeError, match=r"items \[1\] are not"):
        guard.review([red(), "not an image"])  # type: ignore[list-item]


def test_regenerate_becomes_final_action_without_a_pipeline(tmp_path: Path) -> None:
    guard = make_guard(
        tmp_path,
        sexual=0.9,
        action="regenerate",
        escalation={"max_attempts": 3, "final_action": "blur"},
    )
    (decision,) = guard.review([red()])
    assert decision.action is Action.BLUR
    assert decision.rule == "escalation.final_action"
    assert "no regeneration outside a pipeline" in decision.reasons[-1]


def test_sync_wrapper(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, sexual=0.9)
    calls: list[str] = []

    @guard.guard
    def generate(prompt: str, *, n: int = 1) -> list[Image.Image]:
        calls.append(prompt)
        return [red() for _ in range(n)]

    images = generate("a cat", n=2)
    assert isinstance(images, list)
    assert [im.getpixel((0, 0)) for im in images] == [GREY, GREY]
    with pytest.raises(PromptRefused, match=r"violence risk 1\.00") as info:
        generate(prompt="a zorblax")
    assert info.value.decision.rule == "prompt.rules.violence.refuse_at"
    assert calls == ["a cat"]  # the refused prompt never reached generate()
    assert generate.__name__ == "generate"


def test_wrapper_keeps_the_shape(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, sexual=0.0)
    one = guard.guard(lambda prompt: red())("a cat")
    pair = guard.guard(lambda prompt: (red(), red()))("a cat")
    assert isinstance(one, Image.Image)
    assert one.getpixel((0, 0)) == RED  # allowed: unchanged
    assert isinstance(pair, tuple)
    assert len(pair) == 2
    with pytest.raises(TypeError, match="must return a PIL image"):
        guard.guard(lambda prompt: "text")("a cat")
    with pytest.raises(TypeError, match="string prompt"):
        guard.guard(lambda prompt: red())(42)


def test_async_wrapper(tmp_path: Path) -> None:
    guard = make_guard(tmp_path, sexual=0.9)

    @guard.guard
    async def generate(prompt: str) -> Image.Image:
        await asyncio.sleep(0)
        return red()

    async def main() -> tuple[Image.Image, BaseException | None]:
        image = await generate("a cat")
        try:
            await generate("zorblax")
        except PromptRefused as e:
            return image, e
        return image, None

    assert inspect.iscoroutinefunction(generate)
    image, error = asyncio.run(main())
    assert image.getpixel((0, 0)) == GREY
    assert isinstance(error, PromptRefused)


def test_policy_by_name_and_shared_engine(tmp_path: Path) -> None:
    policy = Policy.from_dict({"classifiers": [{"kind": "static", "scores": {"sexual": 0.0}}]})
    engine = PolicyEngine(policy)
    assert SafetyGuard(policy, engine=engine).engine is engine
    with pytest.raises(ValueError, match="another policy"):
        SafetyGuard(policy.model_copy(), engine=engine)
    with pytest.raises(TypeError, match="must be a Policy"):
        SafetyGuard(42)  # type: ignore[arg-type]
