"""Text-embedding steering (``steering.text``): presence measured in the prompt embedding, the
concept's direction subtracted before the denoiser, zero extra UNet passes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.models import concept_world
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy, PolicyError, TextSteering
from safety_lora.steering import Steering, embedding_method, single
from safety_lora.steering.embedding import EmbeddingSteering
from safety_lora.taxonomy import Category
from safety_lora.testing import tiny_pipeline

ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]
MINIMAL = "version: 1\nclassifiers: [{kind: static, scores: {sexual: 0.0}}]\n"


def _images(pipe: Any, prompt: str = "a red car", **kwargs: Any) -> np.ndarray:
    out = pipe(
        prompt,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    )
    return np.asarray(out.images)


@contextmanager
def _unet_calls(pipe: Any) -> Iterator[list[int]]:
    """Counts the UNet's forward calls inside the block."""
    count = [0]
    handle = pipe.unet.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    try:
        yield count
    finally:
        handle.remove()


def _everything(strength: float = 1.0) -> TextSteering:
    """Steering that selects every prompt (threshold -1): the tiny random encoder's cosines
    carry no meaning, so the tests on it steer unconditionally."""
    return TextSteering(
        concepts=["red"], threshold=-1.0, scale=strength, categories=[Category.SEXUAL]
    )


def test_strength_zero_is_bit_identical_and_one_changes_the_image() -> None:
    pipe = tiny_pipeline()
    base = _images(pipe)
    steering = Steering(pipe, single(_everything()))
    with steering.at({"embedding": 0.0}):
        np.testing.assert_array_equal(_images(pipe), base)
        assert "encode_prompt" not in vars(pipe)
    with steering.at({"embedding": 1.0}):
        steered = _images(pipe)
    assert np.abs(steered - base).max() > 1e-3
    assert "encode_prompt" not in vars(pipe)  # restored after the call
    np.testing.assert_array_equal(_images(pipe), base)


def test_no_extra_unet_pass_and_caller_embeddings_are_steered_alike() -> None:
    pipe = tiny_pipeline()
    with _unet_calls(pipe) as plain:
        base = _images(pipe)
    embeds, _ = pipe.encode_prompt("a red car", "cpu", 1, False)
    steering = Steering(pipe, single(_everything()))
    with steering.at({"embedding": 1.0}), _unet_calls(pipe) as steered_calls:
        from_prompt = _images(pipe)
    with steering.at({"embedding": 1.0}):
        from_embeds = _images(pipe, prompt=None, prompt_embeds=embeds)
    assert steered_calls[0] == plain[0] > 0
    np.testing.assert_array_equal(from_embeds, from_prompt)  # prompt_embeds= steered too
    assert np.abs(from_prompt - base).max() > 1e-3


def test_a_unet_call_without_encode_prompt_is_refused() -> None:
    pipe = tiny_pipeline()
    steering = Steering(pipe, single(_everything()))
    latents = torch.zeros(1, 4, 16, 16)
    states = torch.zeros(1, 77, 32)
    with steering.at({"embedding": 1.0}), pytest.raises(ValueError, match="without calling"):
        pipe.unet(latents, 10, encoder_hidden_states=states)
    with steering.at({"embedding": 0.0}):  # off: nothing installed, nothing refused
        pipe.unet(latents, 10, encoder_hidden_states=states)


def test_sdxl_steers_the_hidden_states_and_the_pooled_embedding() -> None:
    pipe = tiny_pipeline("sdxl")
    text = EmbeddingSteering(pipe, concepts=["red"], threshold=-1.0)
    hidden, _, pooled, _ = pipe.encode_prompt(
        "a red car", device="cpu", do_classifier_free_guidance=False
    )
    out = text.steer(hidden, pooled, strength=1.0)
    assert out.pooled is not None
    assert (out.hidden - hidden).abs().max() > 1e-3
    assert (out.pooled - pooled).abs().max() > 1e-3


def test_on_the_embedded_model_only_tokens_carrying_the_concept_move() -> None:
    pipe = concept_world()
    text = EmbeddingSteering(pipe, concepts=["red"])
    prompts = ["a red circle", "a crimson square", "a green square and a red circle"]
    prompts += ["a blue circle", "a green triangle"]
    hidden = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    out = text.steer(hidden, strength=1.0)
    presence = out.presence[:, 0].tolist()
    assert min(presence[:3]) > text.threshold > max(presence[3:])
    assert out.selected == (("red",), ("red",), ("red",), (), ())
    # "a red circle": from the colour word on (bos, a: untouched); the two-object prompt: "red"
    # (position 6) and the tokens after it but "circle" (cosine just under the threshold),
    # "a green square and a" untouched
    assert out.tokens[0, :6].tolist() == [False, False, True, True, True, True]
    assert out.tokens[2, :10].tolist() == [False] * 6 + [True, False, True, True]
    assert not out.tokens[3:].any()
    torch.testing.assert_close(out.hidden[~out.tokens], hidden[~out.tokens], rtol=0, atol=0)
    # a steered token's coordinate along red's direction is the anchor's, at strength 1
    found = text._encode(None)
    unit, level = found.hidden[0], found.anchor @ found.hidden[0]
    along = out.hidden[out.tokens] @ unit
    assert (hidden[out.tokens] @ unit).min() > 2.0
    torch.testing.assert_close(along, torch.full_like(along, level.item()), rtol=0, atol=1e-4)
    # ... and only that coordinate moved: the rest of the token is kept
    rest = (out.hidden - hidden)[out.tokens]
    torch.testing.assert_close(rest - (rest @ unit)[:, None] * unit, torch.zeros_like(rest),
                               rtol=0, atol=1e-4)  # fmt: skip
    # twice the strength moves twice as far
    twice = text.steer(hidden, strength=2.0)
    torch.testing.assert_close(twice.hidden - hidden, 2 * (out.hidden - hidden), rtol=0, atol=1e-5)


def test_several_concepts_are_taken_out_together() -> None:
    pipe = concept_world()
    hidden = pipe.encode_prompt(["a red circle", "a blue square"], "cpu", 1, False)[0]
    text = EmbeddingSteering(pipe, concepts=["red", "crimson"])
    out = text.steer(hidden, strength=1.0)
    assert out.selected == (("red", "crimson"), ())
    found = text._encode(None)
    # both coordinates reach the anchor's, though the two directions are far from orthogonal
    assert (found.hidden[0] @ found.hidden[1]).item() > 0.5
    along = out.hidden[out.tokens] @ found.hidden.T
    torch.testing.assert_close(along, (found.anchor @ found.hidden.T).expand_as(along),
                               rtol=0, atol=1e-4)  # fmt: skip


def test_through_safe_pipeline_strength_follows_the_prompt_risk() -> None:
    pipe = tiny_pipeline()
    text = {"concepts": ["red"], "threshold": -1.0, "categories": ["sexual"], "scale": 0.0}
    policy = Policy.model_validate(
        {
            "prompt": {
                "classifiers": [{"kind": "prompt_rules", "extra_terms": {"sexual": ["red"]}}],
                "rules": {"sexual": {"steer_at": 0.3}},
            },
            "classifiers": ZERO,
            "steering": {"text": {**text, "risk_boost": 1.0}},
        }
    )
    safe = SafePipeline(pipe, policy)
    kw = {"num_inference_steps": 2, "output_type": "np"}
    for prompt, strength in [("a blue car", 0.0), ("a red car", 1.0)]:
        base = _images(pipe, prompt)
        out = safe(prompt, generator=torch.Generator().manual_seed(0), **kw)
        assert out.decisions[0].steering_scales == ({"embedding": strength},)
        same = np.array_equal(np.asarray(out.images), base)
        assert same is (strength == 0.0)


def test_policy_round_trip(tmp_path: Any) -> None:
    text = MINIMAL + (
        "steering:\n"
        "  text: {kind: embedding, concepts: [nudity, naked], anchor: a person,"
        " threshold: 0.1, categories: [sexual], scale: 0.0, risk_boost: 1.0}\n"
    )
    policy = Policy.from_text(text)
    entry = policy.steering.text
    assert isinstance(entry, TextSteering)
    assert (entry.concepts, entry.anchor, entry.threshold) == (["nudity", "naked"], "a person", 0.1)
    assert policy.steering.names == ["embedding"]
    assert policy.steering.methods == [entry]
    again = Policy.from_dict(policy.model_dump(mode="json"))
    assert again.steering == policy.steering
    assert embedding_method("red", strength=0.5).scale == 0.5


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{concepts: [], categories: [sexual]}", "steering.text.concepts"),
        ("{concepts: [red], categories: [sexual], temperature: 0.02}", "steering.text.temperature"),
        ("{concepts: [red], categories: [sexual], kind: surgery}", "steering.text.kind"),
        ("{concepts: [red], categories: [sexual], threshold: 2}", "steering.text.threshold"),
    ],
)
def test_bad_entries_name_the_setting(entry: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_text(MINIMAL + f"steering:\n  text: {entry}\n")
    assert expected in str(info.value)


def test_unsupported_pipelines_are_refused_at_wrap_time() -> None:
    with pytest.raises(ValueError, match="needs a UNet pipeline"):
        Steering(tiny_pipeline("sd3"), single(embedding_method("red")))
