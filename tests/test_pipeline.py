"""SafePipeline: drop-in passthrough, per-image judging, escalation, refusals, SDXL, img2img."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from safety_lora.pipeline import SafePipeline, SafePipelineOutput, SafeTuple, derive_seed
from safety_lora.policies.schema import Policy, PolicyError
from safety_lora.taxonomy import Action, Category
from safety_lora.testing import tiny_lora_file, tiny_pipeline

#: Classifiers that judge and find nothing: every image allowed, as the bare pipeline.
ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]
ALLOW_ALL: dict[str, Any] = {"prompt": {"classifiers": ZERO}, "classifiers": ZERO}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def pipe() -> Any:
    return tiny_pipeline()


@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_allow_all_without_adapter_is_bit_identical(pipe: Any, output_type: str) -> None:
    kw = {"num_inference_steps": 2, "output_type": output_type}
    raw = pipe(["a cat", "a dog"], num_images_per_prompt=2, generator=_gen(), **kw).images
    safe = SafePipeline(pipe, Policy.model_validate(ALLOW_ALL))
    out = safe(["a cat", "a dog"], num_images_per_prompt=2, generator=_gen(), **kw)
    assert isinstance(out, SafePipelineOutput)
    assert type(out.images) is type(raw) and len(out.images) == 4
    for a, b in zip(out.images, raw, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert out.nsfw_content_detected == [False] * 4
    assert [d.action for d in out.decisions] == [Action.ALLOW] * 4


def test_return_dict_false_unpacks_like_the_inner_pipeline(pipe: Any) -> None:
    safe = SafePipeline(pipe, Policy.model_validate(ALLOW_ALL))
    result = safe("a cat", num_inference_steps=2, generator=_gen(), return_dict=False)
    assert isinstance(result, SafeTuple)
    images, nsfw = result
    assert isinstance(images[0], Image.Image) and nsfw == [False]
    assert result.decisions[0].action is Action.ALLOW
    (xl_images,) = SafePipeline(tiny_pipeline("sdxl"), Policy.model_validate(ALLOW_ALL))(
        "a cat", num_inference_steps=2, return_dict=False
    )
    assert len(xl_images) == 1


def test_keywords_pass_through_positional_lists_and_callbacks(pipe: Any) -> None:
    seen: list[int] = []

    def user(p: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(step)
        return tensors

    safe = SafePipeline(pipe, Policy.model_validate(ALLOW_ALL))
    gens = [_gen(1), _gen(2)]
    out = safe(
        ["a cat", "a dog"], 32, 32, num_inference_steps=3, guidance_scale=3.0,
        negative_prompt=["red", "blue"], generator=gens, output_type="np",
        callback_on_step_end=user,
    )  # fmt: skip
    raw = pipe(
        ["a cat", "a dog"], num_inference_steps=3, guidance_scale=3.0,
        negative_prompt=["red", "blue"], generator=[_gen(1), _gen(2)], output_type="np",
    ).images  # fmt: skip
    np.testing.assert_array_equal(out.images, raw)
    assert seen == [0, 1, 2]


def _escalating(lora: Path, **extra: Any) -> Policy:
    return Policy.model_validate(
        {
            "prompt": {"classifiers": ZERO},
            "classifiers": [{"kind": "static", "sequence": [{"sexual": 0.9}, {"sexual": 0.1}]}],
            "categories": {"sexual": {"threshold": 0.5, "action": "regenerate"}},
            "escalation": {"max_attempts": 3, "ladder": [1.0, 2.0], "final_action": "block"},
            "steering": {"adapters": [{"path": str(lora), "categories": ["sexual"]}]},
            **extra,
        }
    )


@pytest.mark.parametrize("seed", ["same", "derived"])
def test_escalation_regenerates_at_the_next_strength_in_place_or_with_a_derived_seed(
    pipe: Any, tmp_path: Path, seed: str
) -> None:
    lora = tiny_lora_file(pipe, tmp_path / "safe.safetensors")
    escalation = {"max_attempts": 3, "ladder": [1.0, 2.0], "final_action": "block", "seed": seed}
    safe = SafePipeline(pipe, _escalating(lora, escalation=escalation))
    out = safe("a cat", num_inference_steps=2, generator=_gen(7), output_type="np")
    (decision,) = out.decisions
    assert decision.action is Action.ALLOW
    assert decision.attempts == 2
    assert decision.steering_scales == ({"safe": 1.0}, {"safe": 2.0})
    assert "attempt 2: safe at 2.00 from image evidence sexual 0.90, ladder x2" in decision.reasons
    assert out.nsfw_content_detected == [False]
    # The kept image is attempt 2 at strength 2: from seed 7's own noise in place, or from
    # seed derive_seed(7, 0, 2).
    regenerated = _gen(7) if seed == "same" else _gen(derive_seed(7, 0, 2))
    with safe.steering.apply({"safe": 2.0}, {}):
        expected = pipe(
            "a cat", num_inference_steps=2, generator=regenerated, output_type="np"
        ).images
    np.testing.assert_array_equal(out.images, expected)


def test_a_flagged_image_is_regenerated_steered_even_at_resting_strength_zero(
    pipe: Any, tmp_path: Path
) -> None:
    lora = tiny_lora_file(pipe, tmp_path / "safe.safetensors")
    policy = _escalating(lora)
    data = policy.model_dump(mode="json")
    data["steering"]["adapters"][0].update(scale=0.0, risk_boost=0.0)
    data["classifiers"] = [{"kind": "static", "sequence": [{"sexual": 0.9}, {"sexual": 0.8},
                                                           {"sexual": 0.1}]}]  # fmt: skip
    safe = SafePipeline(pipe, Policy.model_validate(data))
    out = safe("a cat", num_inference_steps=2, generator=_gen(7), output_type="np")
    (decision,) = out.decisions
    # the rungs times the flagged score, never a reroll at 0
    assert decision.steering_scales == ({"safe": 0.0}, {"safe": 1.8}, {"safe": 1.6})
    assert decision.attempts == 3 and decision.action is Action.ALLOW


def test_an_image_sharing_its_generator_regenerates_with_a_new_seed_and_says_so(
    pipe: Any, tmp_path: Path
) -> None:
    lora = tiny_lora_file(pipe, tmp_path / "safe.safetensors")
    safe = SafePipeline(pipe, _escalating(lora))
    out = safe("a cat", num_images_per_prompt=2, num_inference_steps=2, generator=_gen(7))
    first = out.decisions[0]
    assert first.attempts >= 2
    assert any("a new seed (the image shares its generator" in r for r in first.reasons)


def test_escalation_ends_with_the_final_action_per_image(pipe: Any, tmp_path: Path) -> None:
    lora = tiny_lora_file(pipe, tmp_path / "safe.safetensors")
    policy = _escalating(lora, escalation={"max_attempts": 2, "final_action": "block"})
    # Static sequence over successive images: attempt 1 -> [flag, ok], attempt 2 -> [flag].
    safe = SafePipeline(pipe, policy)
    out = safe("a cat", num_images_per_prompt=2, num_inference_steps=2, generator=_gen())
    first, second = out.decisions
    assert (first.action, first.attempts, first.rule) == (
        Action.BLOCK, 2, "escalation.final_action",
    )  # fmt: skip
    assert (second.action, second.attempts) == (Action.ALLOW, 1)
    assert out.nsfw_content_detected == [True, False]
    assert np.asarray(out.images[0]).std() < np.asarray(out.images[1]).std()  # placeholder


def test_refused_prompt_is_not_generated(pipe: Any) -> None:
    policy = Policy.model_validate(
        {
            "prompt": {
                "classifiers": [{"kind": "static", "scores": {"violence": 0.9}}],
                "rules": {"violence": {"steer_at": 0.3, "refuse_at": 0.8}},
            },
            "classifiers": ZERO,
        }
    )
    steps: list[int] = []
    safe = SafePipeline(pipe, policy)
    out = safe(
        "a gun", num_images_per_prompt=2, num_inference_steps=2, output_type="np",
        callback_on_step_end=lambda p, i, t, kw: (steps.append(i), kw)[1],
    )  # fmt: skip
    assert steps == []
    assert out.images.shape == (2, 32, 32, 3)
    assert [d.action for d in out.decisions] == [Action.BLOCK] * 2
    assert out.decisions[0].rule == "prompt.rules.violence.refuse_at"
    assert out.decisions[0].prompt_decision is not None
    assert out.decisions[0].prompt_decision.risk == {Category.VIOLENCE: 0.9}


def test_pipeline_safety_checker_is_off_during_the_call_and_restored(pipe: Any) -> None:
    calls: list[int] = []

    class Checker(torch.nn.Module):
        def forward(self, images: Any, clip_input: Any) -> Any:
            calls.append(1)
            return images, [True] * len(images)

    checker = Checker()
    object.__setattr__(pipe, "safety_checker", checker)
    object.__setattr__(pipe, "feature_extractor", None)
    safe = SafePipeline(pipe, Policy.model_validate(ALLOW_ALL))
    assert safe.disabled_safety_checker == "Checker"
    out = safe("a cat", num_inference_steps=2)
    assert calls == [] and out.nsfw_content_detected == [False]
    assert pipe.safety_checker is checker


def test_sdxl_and_img2img_are_wrapped(tmp_path: Path) -> None:
    xl = tiny_pipeline("sdxl")
    lora = tiny_lora_file(xl, tmp_path / "xl.safetensors")
    policy = Policy.model_validate(
        {**ALLOW_ALL, "steering": {"adapters": [{"path": str(lora), "categories": ["sexual"]}]}}
    )
    out = SafePipeline(xl, policy)("a cat", num_inference_steps=2, output_type="np")
    assert out.images.shape == (1, 32, 32, 3)
    assert out.decisions[0].steering_scales == ({"xl": 1.0},)

    i2i = tiny_pipeline(img2img=True)
    init = Image.new("RGB", (32, 32), (200, 30, 30))
    kw = {"image": init, "strength": 0.5, "num_inference_steps": 4, "output_type": "np"}
    raw = i2i("a cat", generator=_gen(), **kw).images
    wrapped = SafePipeline(i2i, Policy.model_validate(ALLOW_ALL))("a cat", generator=_gen(), **kw)
    np.testing.assert_array_equal(wrapped.images, raw)


def test_bad_arguments_are_clear_errors(pipe: Any) -> None:
    safe = SafePipeline(pipe, Policy.preset("permissive"))
    with pytest.raises(ValueError, match="output_type"):
        safe("a cat", num_inference_steps=2, output_type="latent")
    with pytest.raises(ValueError, match="`prompt` is required"):
        safe(prompt_embeds=torch.zeros(1, 77, 32), num_inference_steps=2)


def test_threads_with_different_strengths_match_sequential_calls(pipe: Any, tmp_path: Path) -> None:
    import threading

    lora = tiny_lora_file(pipe, tmp_path / "safe.safetensors")
    policy = Policy.model_validate(
        {
            "classifiers": ZERO,
            "steering": {
                "adapters": [
                    {"path": str(lora), "categories": ["sexual"], "scale": 0.0, "risk_boost": 2.0}
                ]
            },
        }
    )
    safe = SafePipeline(pipe, policy)
    prompts = {"steered": "a nude cat", "plain": "a cat"}

    def call(prompt: str) -> Any:
        return safe(prompt, num_inference_steps=2, generator=_gen(3), output_type="np")

    sequential = {k: call(p) for k, p in prompts.items()}
    strengths = {k: out.decisions[0].steering_scales[0]["safe"] for k, out in sequential.items()}
    assert strengths["plain"] == 0.0 and strengths["steered"] > 1.0
    assert not np.array_equal(sequential["plain"].images, sequential["steered"].images)

    results: dict[str, list[Any]] = {k: [] for k in prompts}

    def worker(key: str) -> None:
        for _ in range(3):
            results[key].append(call(prompts[key]).images)

    threads = [threading.Thread(target=worker, args=(k,)) for k in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key, outs in results.items():
        assert len(outs) == 3
        for images in outs:
            np.testing.assert_array_equal(images, sequential[key].images)


def test_a_preset_name_or_a_file_is_a_policy_too(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "version: 1\nname: mine\nclassifiers: [{kind: static, scores: {sexual: 0.0}}]\n"
    )
    assert SafePipeline(tiny_pipeline(), str(path)).policy.name == "mine"
    assert SafePipeline(tiny_pipeline(), path).policy.name == "mine"
    with pytest.raises(PolicyError, match="did you mean 'balanced'"):
        SafePipeline(tiny_pipeline(), "balance")
