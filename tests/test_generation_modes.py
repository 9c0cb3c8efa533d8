"""Every generation mode: input images judged under the policy, steering kept in each mode."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
)
from PIL import Image

from safety_lora.demo import demo_policy
from safety_lora.inputs import InputError, find_inputs
from safety_lora.models import CONCEPT_WORLD_DEFAULTS, concept_world
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy, PolicyError
from safety_lora.taxonomy import Action
from safety_lora.testing import tiny_controlnet, tiny_lora_file, tiny_pipeline

RED = (220, 30, 30)
BLUE = (30, 30, 220)
KW: dict[str, Any] = dict(CONCEPT_WORLD_DEFAULTS)
ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _solid(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 32), colour)


def _demo(tmp_path: Path, *, judge_outputs: bool = True, **inputs: Any) -> Policy:
    """The demo policy with an audit log in ``tmp_path`` and its ``inputs`` section replaced
    (``judge_outputs=False``: outputs allowed, inputs judged by ``inputs.categories``)."""
    data = demo_policy().model_dump(mode="json")
    data["audit"] = {"path": str(tmp_path / "audit.jsonl")}
    data["inputs"] = inputs or {"action": "refuse"}
    if not judge_outputs:
        data["categories"]["sexual"]["action"] = "allow"
    return Policy.model_validate(data, context={"base": tmp_path})


@pytest.fixture(scope="module")
def world() -> Any:
    return concept_world()


def _i2i(world: Any, policy: Policy) -> SafePipeline:
    return SafePipeline(world, policy).derive(StableDiffusionImg2ImgPipeline.from_pipe(world))


def _lines(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


# -- input images judged -------------------------------------------------------------------


def test_an_unsafe_input_refuses_the_request_before_generation(world: Any, tmp_path: Path) -> None:
    safe = _i2i(world, _demo(tmp_path))
    calls: list[int] = []
    handle = world.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        out = safe("a circle", image=_solid(RED), strength=0.5, generator=_gen(), **KW)
    finally:
        handle.remove()
        safe.close()
    (decision,) = out.decisions
    assert calls == []  # nothing generated
    assert decision.action is Action.BLOCK and decision.rule == "inputs.action"
    assert decision.input_name == "image" and decision.attempts == 0
    assert "input image refused" in decision.reasons
    assert any("image: sexual 1.00 >= 0.50 -> refuse" in r for r in decision.reasons)
    kinds = [(line["kind"], line.get("input"), line["action"]) for line in _lines(tmp_path)]
    assert kinds == [("prompt", None, "allow"), ("input", "image", "block"),
                     ("image", "image", "block")]  # fmt: skip


def test_a_benign_input_is_edited_exactly_as_by_the_base_pipeline(
    world: Any, tmp_path: Path
) -> None:
    base = StableDiffusionImg2ImgPipeline.from_pipe(world)
    kw = {"image": _solid(BLUE), "strength": 0.5, "output_type": "np", **KW}
    raw = base("a circle", generator=_gen(3), **kw).images
    safe = _i2i(world, _demo(tmp_path))
    try:
        out = safe("a circle", generator=_gen(3), **kw)
    finally:
        safe.close()
    assert out.decisions[0].steering_scales == ({"erase_red": 0.0},)
    assert out.decisions[0].action is Action.ALLOW
    np.testing.assert_array_equal(out.images, raw)  # steering strength 0: the base model
    assert [line["kind"] for line in _lines(tmp_path)] == ["prompt", "input", "image"]


def test_replace_goes_on_from_the_placeholder_and_blur_from_the_blurred_input(
    world: Any, tmp_path: Path
) -> None:
    from safety_lora.imaging import placeholder

    base = StableDiffusionImg2ImgPipeline.from_pipe(world)
    kw = {"strength": 0.5, "output_type": "np", **KW}
    grey = placeholder((32, 32), "replaced by\nsafety policy")
    expected = base("a square", image=grey, generator=_gen(1), **kw).images
    safe = _i2i(
        world, _demo(tmp_path, judge_outputs=False, categories={"sexual": {"action": "replace"}})
    )
    try:
        out = safe("a square", image=_solid(RED), generator=_gen(1), **kw)
    finally:
        safe.close()
    np.testing.assert_array_equal(out.images, expected)
    (line,) = [x for x in _lines(tmp_path) if x["kind"] == "input"]
    assert line["action"] == "replace" and line["rule"] == "inputs.categories.sexual"


def test_each_prompt_answers_for_its_own_input(world: Any, tmp_path: Path) -> None:
    safe = _i2i(world, _demo(tmp_path))
    try:
        out = safe(
            ["a circle", "a square"], image=[_solid(RED), _solid(BLUE)], strength=0.5,
            generator=[_gen(0), _gen(1)], **KW,
        )  # fmt: skip
    finally:
        safe.close()
    first, second = out.decisions
    assert first.action is Action.BLOCK and first.input_name == "image[0]"
    assert second.attempts == 1 and second.input_name == ""
    assert [(d.input_name, d.action) for d in out.input_decisions] == [
        ("image[0]", Action.BLOCK), ("image[1]", Action.ALLOW),
    ]  # fmt: skip


def test_with_several_images_per_prompt_an_unsafe_input_refuses_every_prompt(
    world: Any, tmp_path: Path
) -> None:
    # diffusers pairs init images with outputs round-robin across prompts here: image[0]
    # would also feed the second prompt's images, so it refuses them all
    safe = _i2i(world, _demo(tmp_path))
    try:
        out = safe(
            ["a circle", "a square"], image=[_solid(RED), _solid(BLUE)], strength=0.5,
            num_images_per_prompt=2, **KW,
        )  # fmt: skip
    finally:
        safe.close()
    assert [d.action for d in out.decisions] == [Action.BLOCK] * 4
    assert {d.input_name for d in out.decisions} == {"image[0]"}


def test_inpainting_judges_the_mask_and_the_image(world: Any, tmp_path: Path) -> None:
    safe = SafePipeline(world, _demo(tmp_path)).derive(
        StableDiffusionInpaintPipeline.from_pipe(world)
    )
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[8:24, 8:24] = 1.0
    try:
        out = safe(
            "a blue circle", image=_solid(BLUE), mask_image=mask, strength=0.8,
            generator=_gen(), **KW,
        )  # fmt: skip
    finally:
        safe.close()
    assert out.decisions[0].attempts >= 1
    names = [line["input"] for line in _lines(tmp_path) if line["kind"] == "input"]
    assert names == ["image", "mask_image"]


def test_tensors_and_arrays_are_judged_and_swapped_in_their_own_form(
    world: Any, tmp_path: Path
) -> None:
    red = torch.zeros(1, 3, 32, 32)
    red[:, 0] = 0.9  # a batch of one, 0..1, channels first
    base = StableDiffusionImg2ImgPipeline.from_pipe(world)
    kw = {"strength": 0.5, "output_type": "np", **KW}
    from safety_lora.imaging import placeholder

    grey = placeholder((32, 32), "replaced by\nsafety policy")
    grey_tensor = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255).permute(2, 0, 1)
    expected = base("a square", image=grey_tensor[None], generator=_gen(1), **kw).images
    safe = _i2i(
        world, _demo(tmp_path, judge_outputs=False, categories={"sexual": {"action": "replace"}})
    )
    try:
        out = safe("a square", image=red, generator=_gen(1), **kw)
    finally:
        safe.close()
    np.testing.assert_allclose(out.images, expected, atol=1e-6)
    assert red[0, 0, 0, 0].item() == pytest.approx(0.9)  # the caller's tensor is untouched


def test_inputs_that_cannot_be_judged_are_clear_errors() -> None:
    with pytest.raises(
        InputError, match=r"`image\[0\]`: a tensor of 4 channels is taken as latents"
    ):
        find_inputs({"image": torch.zeros(1, 4, 32, 32)})
    with pytest.raises(InputError, match="`ip_adapter_image_embeds` hides the image"):
        find_inputs({"ip_adapter_image_embeds": [torch.zeros(2, 1, 8)]})
    with pytest.raises(InputError, match=r"`control_image\[1\]`: a PIL image.*got str"):
        find_inputs({"control_image": [_solid(RED), "red.png"]})
    with pytest.raises(InputError, match="NaN"):
        find_inputs({"mask_image": np.full((8, 8), np.nan, dtype=np.float32)})
    names = [i.name for i in find_inputs({"ip_adapter_image": [[_solid(RED), _solid(BLUE)]]})]
    assert names == ["ip_adapter_image[0][0]", "ip_adapter_image[0][1]"]


def test_an_undecodable_input_refuses_with_the_error(world: Any, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    _solid(BLUE).save(buffer, format="PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:60]))  # lazily decoded: fails later
    safe = _i2i(world, _demo(tmp_path))
    try:
        out = safe("a circle", image=truncated, strength=0.5, generator=_gen(), **KW)
    finally:
        safe.close()
    (decision,) = out.decisions
    assert decision.action is Action.BLOCK and decision.rule == "inputs.on_error"
    assert "image: cannot be judged: the request is refused" in decision.reasons
    assert any("cannot be decoded" in e for e in decision.errors)


def test_the_inputs_section_is_validated() -> None:
    with pytest.raises(
        PolicyError, match=r"inputs\.categories\.violence: action refuse, but no image"
    ):
        Policy.from_dict(
            {"classifiers": ZERO, "inputs": {"categories": {"violence": {"action": "refuse"}}}}
        )
    with pytest.raises(PolicyError, match=r"inputs\.action"):
        Policy.from_dict({"classifiers": ZERO, "inputs": {"action": "regenerate"}})
    for preset in ("strict", "balanced", "permissive"):
        policy = Policy.preset(preset)
        assert "inputs" in policy.model_fields_set, preset  # every preset says it explicitly


# -- steering in every mode -----------------------------------------------------------------


def _modes() -> dict[str, Any]:
    sd = tiny_pipeline()
    xl = tiny_pipeline("sdxl")
    return {
        "img2img": StableDiffusionImg2ImgPipeline.from_pipe(sd),
        "inpaint": StableDiffusionInpaintPipeline.from_pipe(sd),
        "controlnet": StableDiffusionControlNetPipeline.from_pipe(
            sd, controlnet=tiny_controlnet(sd)
        ),
        "sdxl-img2img": StableDiffusionXLImg2ImgPipeline.from_pipe(xl),
        "sdxl-inpaint": StableDiffusionXLInpaintPipeline.from_pipe(xl),
    }


def _call_kwargs(mode: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"image": _solid(BLUE), "num_inference_steps": 4, "output_type": "np"}
    if "inpaint" in mode:
        kw["mask_image"] = Image.new("L", (32, 32), 255)
    if mode != "controlnet":
        kw["strength"] = 0.75
    return kw


@pytest.mark.parametrize(
    "mode", ["img2img", "inpaint", "controlnet", "sdxl-img2img", "sdxl-inpaint"]
)
def test_every_mode_keeps_the_wrappers_guarantees(mode: str, tmp_path: Path) -> None:
    pipe = _modes()[mode]
    kw = _call_kwargs(mode)
    raw = pipe("a cat", generator=_gen(5), **kw).images
    lora = tiny_lora_file(pipe, tmp_path / "safe.safetensors")
    adapter = {"path": str(lora), "categories": ["sexual"], "scale": 0.0, "risk_boost": 2.0}
    policy = Policy.model_validate(
        {"classifiers": ZERO, "steering": {"adapters": [adapter]}}, context={"base": tmp_path}
    )
    safe = SafePipeline(pipe, policy)
    plain = safe("a cat", generator=_gen(5), **kw)
    np.testing.assert_array_equal(plain.images, raw)  # strength 0: pixel-exact
    steered = safe("a nude cat", generator=_gen(5), **kw)
    assert steered.decisions[0].steering_scales[0]["safe"] > 1.0
    reference = pipe("a nude cat", generator=_gen(5), **kw).images
    assert not np.array_equal(steered.images, reference)  # the adapter acted

    results: list[Any] = []

    def worker() -> None:
        results.append(safe("a nude cat", generator=_gen(5), **kw).images)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for images in results:
        np.testing.assert_array_equal(images, steered.images)  # threads equal sequential
    safe.close()
    np.testing.assert_array_equal(pipe("a cat", generator=_gen(5), **kw).images, raw)


def test_sld_steers_image_to_image_and_controlnet_from_their_place_in_the_schedule() -> None:
    from safety_lora.steering.sld import SafetyGuidance, sld_preset

    sd = tiny_pipeline()
    for pipe in (
        StableDiffusionImg2ImgPipeline.from_pipe(sd),
        StableDiffusionControlNetPipeline.from_pipe(sd, controlnet=tiny_controlnet(sd)),
    ):
        kw = {"image": _solid(BLUE), "num_inference_steps": 4, "output_type": "np"}
        if not isinstance(pipe, StableDiffusionControlNetPipeline):
            kw["strength"] = 0.5  # two of four steps, from step 2 of the schedule
        raw = pipe("a cat", generator=_gen(), **kw).images
        # a 2-step warm-up: counted from the run's first call, image-to-image at strength 0.5
        # (schedule steps 2 and 3) would never be steered
        config = dataclasses.replace(sld_preset("medium"), warmup_steps=2)
        with SafetyGuidance(pipe, concept="a dog", config=config) as hook:
            steered = pipe("a cat", generator=_gen(), **kw).images
        assert hook.extra_calls == (2 if "strength" in kw else 4)
        assert not np.array_equal(steered, raw)


def test_a_mode_that_cannot_be_steered_is_named_at_wrap_time(tmp_path: Path) -> None:
    sd = tiny_pipeline()
    pix2pix = StableDiffusionInstructPix2PixPipeline.from_pipe(sd)
    policy = Policy.model_validate(
        {
            "classifiers": ZERO,
            "steering": {"guidance": {"concepts": ["nudity"], "categories": ["sexual"]}},
        }
    )
    with pytest.raises(ValueError, match="cannot steer StableDiffusionInstructPix2PixPipeline"):
        SafePipeline(pix2pix, policy)
    safe = SafePipeline(sd, policy)
    with pytest.raises(ValueError, match="cannot steer StableDiffusionInstructPix2PixPipeline"):
        safe.derive(pix2pix)
    with pytest.raises(ValueError, match="must share this pipeline's `unet`"):
        safe.derive(StableDiffusionImg2ImgPipeline.from_pipe(tiny_pipeline(seed=1)))


def test_fused_mode_and_windows_act_in_image_to_image_as_in_text_to_image(tmp_path: Path) -> None:
    i2i = StableDiffusionImg2ImgPipeline.from_pipe(tiny_pipeline())
    kw = {"image": _solid(BLUE), "strength": 0.75, "num_inference_steps": 4, "output_type": "np"}
    lora = tiny_lora_file(i2i, tmp_path / "safe.safetensors")

    def wrapped(**steering: Any) -> SafePipeline:
        adapter = {"path": str(lora), "categories": ["sexual"], "scale": 1.0}
        return SafePipeline(
            i2i,
            Policy.model_validate(
                {"classifiers": ZERO, "steering": {"adapters": [adapter], **steering}},
                context={"base": tmp_path},
            ),
        )

    raw = i2i("a cat", generator=_gen(2), **kw).images
    outputs = {}
    for name, steering in {
        "dynamic": {},
        "fused": {"mode": "fused"},
        "late window": {"window": [0.5, 1.0]},
    }.items():
        safe = wrapped(**steering)
        outputs[name] = safe("a cat", generator=_gen(2), **kw).images
        safe.close()
        # close restores the pipeline (unfusing leaves float rounding only)
        np.testing.assert_allclose(i2i("a cat", generator=_gen(2), **kw).images, raw, atol=1e-5)
    np.testing.assert_allclose(outputs["fused"], outputs["dynamic"], atol=1e-4)  # same strength
    assert not np.allclose(outputs["dynamic"], raw, atol=1e-4)
    # the window covers the last half of the steps that run: between none and all
    assert not np.allclose(outputs["late window"], raw, atol=1e-4)
    assert not np.allclose(outputs["late window"], outputs["dynamic"], atol=1e-4)
