"""ESD on transformer denoisers (tiny SD3, Flux, PixArt): targets, loss, files, steering."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.adapters import read_adapter
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.training import AdversarialTraining, base_fingerprint, train_adapter
from safety_lora.workbench.training.esd import EsdTrainer

KINDS = ["sd3", "flux", "pixart"]
#: esd-x's text-reading projections: joint attention's text side, PixArt's cross-attention.
TEXT_SIDE = {
    "sd3": ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    "flux": ("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    "pixart": ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"),
}


def _images(pipe: Any) -> np.ndarray:
    out = pipe("a red car", num_inference_steps=2, output_type="np", max_sequence_length=16,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    return np.asarray(out.images)


@pytest.mark.parametrize("kind", KINDS)
def test_esd_steps_lower_the_loss_on_a_transformer(config_factory: Any, kind: str) -> None:
    torch.set_num_threads(1)
    pipe = tiny_pipeline(kind)  # type: ignore[arg-type]
    trainer = EsdTrainer(pipe, config_factory(kind, ddim_steps=2, guidance_scale=1.0))
    try:
        assert trainer.targets and all(t.endswith(TEXT_SIDE[kind]) for t in trainer.targets)
        before = trainer.validation_loss()
        for _ in range(8):
            trainer.train_step()
        assert trainer.validation_loss() < 0.9 * before
    finally:
        trainer.close()
    assert not getattr(pipe.transformer, "peft_config", None)  # removed again


def test_flux_loha_is_written_with_lycoris_keys_and_steers(config_factory: Any) -> None:
    torch.set_num_threads(1)
    pipe = tiny_pipeline("flux")
    base = _images(pipe)
    fingerprint = base_fingerprint(pipe.transformer)
    result = train_adapter(config_factory("loha", adapter="loha", steps=4, lr=0.1), pipe=pipe)
    np.testing.assert_array_equal(_images(pipe), base)  # the pipeline is left as it was
    state, fmt = read_adapter(result.path, unet=pipe.transformer)
    assert (fmt, state.family, state.denoiser) == ("lycoris", "loha", "transformer")
    assert state.modules.keys() == set(result.target_modules)
    assert result.metadata["safety_lora.base_fingerprint"] == fingerprint

    def steered(scale: float) -> np.ndarray:
        spec = {"path": str(result.path), "categories": ["sexual"], "scale": scale}
        policy = Policy.model_validate(
            {"classifiers": [{"kind": "static", "scores": {"sexual": 0.0}}],
             "steering": {"mode": "dynamic", "adapters": [spec]}}
        )  # fmt: skip
        return _images(SafePipeline(tiny_pipeline("flux"), policy))

    np.testing.assert_array_equal(steered(0.0), base)
    assert np.abs(steered(1.0) - base).max() > 1e-4


def test_adversarial_esd_is_refused_on_a_transformer(config_factory: Any) -> None:
    pipe = tiny_pipeline("sd3")
    config = config_factory(adversarial=AdversarialTraining())
    with pytest.raises(ValueError, match="supports UNet pipelines"):
        EsdTrainer(pipe, config)
    assert not getattr(pipe.transformer, "peft_config", None)


def test_esd_refuses_a_scheduler_without_flow_matching(config_factory: Any) -> None:
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline("flux")
    pipe.scheduler = DDIMScheduler()
    with pytest.raises(ValueError, match="not a flow-matching one"):
        EsdTrainer(pipe, config_factory())
    assert not getattr(pipe.transformer, "peft_config", None)
