"""SLD as a UNet hook: presets as diffusers', off at scale 0, equal to diffusers' SLD pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipelineSafe

from safety_lora.steering.sld import SLD_PRESETS, SafetyGuidance, SLDConfig, sld_preset
from safety_lora.testing import tiny_pipeline

PROMPTS = ["a red car", "a photo of a dog"]
CALL: dict[str, Any] = {"num_inference_steps": 10, "guidance_scale": 7.5, "output_type": "np"}


def _generate(pipe: Any, **kwargs: Any) -> np.ndarray:
    generators = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    return np.asarray(pipe(PROMPTS, generator=generators, **CALL, **kwargs).images)


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tiny_pipeline()


def test_presets_are_diffusers_safety_config() -> None:
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    for name, ours in SLD_PRESETS.items():
        theirs = getattr(SafetyConfig, name.upper())
        assert ours.warmup_steps == theirs["sld_warmup_steps"]
        assert ours.guidance_scale == theirs["sld_guidance_scale"]
        assert ours.threshold == theirs["sld_threshold"]
        assert ours.momentum_scale == theirs["sld_momentum_scale"]
        assert ours.mom_beta == theirs["sld_mom_beta"]


def test_scale_zero_is_plain_generation_exactly(pipe: Any) -> None:
    plain = _generate(pipe)
    config = SLDConfig(warmup_steps=0, guidance_scale=0.0, threshold=1.0, momentum_scale=0.5,
                       mom_beta=0.7)  # fmt: skip
    with SafetyGuidance(pipe, concept="red", config=config) as guidance:
        guided = _generate(pipe)
    assert np.array_equal(plain, guided)
    assert guidance.extra_calls == 0
    assert not pipe.unet._forward_hooks  # the hook is gone after the block


@pytest.mark.filterwarnings("ignore:The decode_latents method is deprecated:FutureWarning")
@pytest.mark.parametrize("preset", ["weak", "strong", "max"])
def test_equals_diffusers_sld_pipeline(pipe: Any, preset: str) -> None:
    """Same components, same seeds: our hook on the plain pipeline = StableDiffusionPipelineSafe."""
    safe = StableDiffusionPipelineSafe(**pipe.components, requires_safety_checker=False)
    safe.set_progress_bar_config(disable=True)
    safe.safety_concept = "red"
    cfg = sld_preset(preset)
    expected = _generate(
        safe,
        sld_guidance_scale=cfg.guidance_scale,
        sld_warmup_steps=cfg.warmup_steps,
        sld_threshold=cfg.threshold,
        sld_momentum_scale=cfg.momentum_scale,
        sld_mom_beta=cfg.mom_beta,
    )
    with SafetyGuidance(pipe, concept="red", config=cfg) as guidance:
        ours = _generate(pipe)
    np.testing.assert_allclose(ours, expected, atol=2e-5)
    assert guidance.extra_calls == CALL["num_inference_steps"]  # one extra UNet pass per step
    if preset != "weak":  # weak's warmup (15) outlasts the 10 steps: nothing changes
        assert np.abs(ours - _generate(pipe)).max() > 1e-4


def test_state_restarts_with_each_generation(pipe: Any) -> None:
    with SafetyGuidance(pipe, concept="red", config=sld_preset("strong")):
        first, second = _generate(pipe), _generate(pipe)
    assert np.array_equal(first, second)


def test_sdxl_pipeline_runs() -> None:
    xl = tiny_pipeline("sdxl")
    with SafetyGuidance(xl, concept="red", config=sld_preset("max")) as guidance:
        images = _generate(xl)
    assert images.shape[0] == 2 and np.isfinite(images).all()
    assert guidance.extra_calls == CALL["num_inference_steps"]


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="mom_beta"):
        SLDConfig(warmup_steps=0, guidance_scale=10, threshold=0, momentum_scale=0, mom_beta=2)
    with pytest.raises(ValueError, match="'huge'"):
        sld_preset("huge")
    with pytest.raises(ValueError, match="concept"):
        SafetyGuidance(object(), concept=" ", config=sld_preset("weak"))
