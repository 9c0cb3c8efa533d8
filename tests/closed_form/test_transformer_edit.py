"""Closed-form erasure on transformer denoisers (tiny SD3, Flux, PixArt): where, what it does,
steering."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.adapters import load_adapter, read_adapter
from safety_lora.closed_form import ClosedFormConfig, erase
from safety_lora.conditioning import PromptBank
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.hardening import harden
from safety_lora.workbench.training.denoiser import Denoiser

KINDS = ["sd3", "flux"]
# UCE's paper form: the concept takes the anchor's values (the defaults push past it)
CONFIG = ClosedFormConfig(erase=["a red cat"], preserve=["a blue dog"], push=0.0, lam=0.5)
PROMPTS = ["a red cat", "", "a blue dog"]


def _predictions(pipe: Any) -> torch.Tensor:
    """The denoiser's prediction for each of PROMPTS on one shared noisy latent."""
    denoiser = Denoiser.of(pipe, 1.0)
    bank = PromptBank.encode(pipe, PROMPTS, latent_size=0)
    x = torch.randn((1, *denoiser.shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return denoiser(x.expand(len(PROMPTS), *denoiser.shape), torch.tensor(500.0), bank,
                        bank.index(PROMPTS))  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_the_edit_moves_the_concept_toward_its_anchor(tmp_path: Path, kind: str) -> None:
    torch.set_num_threads(1)
    pipe = tiny_pipeline(kind)  # type: ignore[arg-type]
    before = _predictions(pipe)
    result = erase(CONFIG, out=tmp_path / "edit.safetensors", pipe=pipe)
    state, _ = read_adapter(result.path, unet=pipe.transformer)
    assert state.denoiser == "transformer"
    assert set(state.modules) == {"context_embedder", "time_text_embed.text_embedder.linear_1"}
    load_adapter(pipe.transformer, result.path, adapter_name="edit")
    after = _predictions(pipe)
    concept, anchor, kept = 0, 1, 2
    gap = float((before[concept] - before[anchor]).norm())
    assert float((after[concept] - before[anchor]).norm()) < 0.2 * gap
    moved = float((after[kept] - before[kept]).norm())
    assert moved < 0.25 * float((before[kept] - before[anchor]).norm())


@pytest.mark.parametrize("kind", ["flux", "pixart"])
def test_a_closed_form_steering_entry_solves_and_steers(kind: str) -> None:
    torch.set_num_threads(1)
    extra = {"use_resolution_binning": False, "clean_caption": False} if kind == "pixart" else {}

    def images(pipe: Any) -> np.ndarray:
        out = pipe("a red cat", num_inference_steps=2, output_type="np", max_sequence_length=16,
                   generator=torch.Generator().manual_seed(0), **extra)  # fmt: skip
        return np.asarray(out.images)

    def steered(scale: float) -> np.ndarray:
        entry = {"closed_form": CONFIG.model_dump(), "categories": ["sexual"], "scale": scale}
        policy = Policy.model_validate(
            {"classifiers": [{"kind": "static", "scores": {"sexual": 0.0}}],
             "steering": {"mode": "dynamic", "adapters": [entry]}}
        )  # fmt: skip
        return images(SafePipeline(tiny_pipeline(kind), policy))  # type: ignore[arg-type]

    base = images(tiny_pipeline(kind))  # type: ignore[arg-type]
    np.testing.assert_array_equal(steered(0.0), base)
    assert np.abs(steered(1.0) - base).max() > 1e-4


def test_rece_and_attack_rounds_are_refused_on_a_transformer(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd3")
    with pytest.raises(ValueError, match="set rounds: 0"):
        erase(CONFIG.model_copy(update={"rounds": 1}), out=tmp_path / "a.safetensors", pipe=pipe)
    attack = CONFIG.model_copy(update={"attack_rounds": 1})
    with pytest.raises(ValueError, match=r"attack_rounds` 1 run the attack harness"):
        erase(attack, out=tmp_path / "b.safetensors", pipe=pipe)  # the runtime never attacks
    with pytest.raises(ValueError, match="set attack_rounds: 0"):
        erase(attack, out=tmp_path / "b.safetensors", pipe=pipe, refine=harden)


PIXART = ClosedFormConfig(
    erase=["red"], templates=["a {} cat"], preserve=["a blue dog"], push=0.0, lam=0.5
)


def _pixart_predictions(pipe: Any, prompts: list[str]) -> torch.Tensor:
    """PixArt's transformer output for each of ``prompts`` on one shared noisy latent."""
    embeds, mask, _, _ = pipe.encode_prompt(
        prompts, do_classifier_free_guidance=False, device="cpu", clean_caption=False
    )
    config = pipe.transformer.config
    shape = (config.in_channels, config.sample_size, config.sample_size)
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe.transformer(
            x.expand(len(prompts), *shape),
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=torch.tensor([500] * len(prompts)),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        ).sample


def test_pixart_is_edited_on_its_cross_attention_as_uce_does(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    pipe = tiny_pipeline("pixart")
    prompts = ["a red cat", "a cat", "a blue dog"]  # concept, its anchor, kept
    before = _pixart_predictions(pipe, prompts)
    result = erase(PIXART, out=tmp_path / "edit.safetensors", pipe=pipe)
    state, _ = read_adapter(result.path, unet=pipe.transformer)
    assert state.denoiser == "transformer"
    assert {p.rsplit(".", 1)[-1] for p in state.modules} == {"to_k", "to_v"}
    assert all(".attn2." in p for p in state.modules)
    load_adapter(pipe.transformer, result.path, adapter_name="edit")
    after = _pixart_predictions(pipe, prompts)
    concept, anchor, kept = 0, 1, 2
    gap = float((before[concept] - before[anchor]).norm())
    # T5's attention mask leaves no padding to absorb the inserted word ("red" -> "a"
    # doubles a key), so the concept gets part of the way, not all of it (README)
    assert float((after[concept] - before[anchor]).norm()) < 0.6 * gap
    moved = float((after[kept] - before[kept]).norm())
    assert moved < 0.15 * float((before[kept] - before[anchor]).norm())
