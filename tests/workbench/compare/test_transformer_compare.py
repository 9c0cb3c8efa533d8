"""compare on transformer denoisers (tiny SD3, PixArt): adapters train, load and are measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.adapters import read_adapter
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.compare import CompareConfig, run
from safety_lora.workbench.compare.methods import Sampler

RATES = ("concept_rate", "erasure", "kept", "other", "preservation", "block_rate")


def _config(out: Path, **overrides: Any) -> CompareConfig:
    fields: dict[str, Any] = {
        "erase": "red", "families": ["lora"], "seeds": 1, "steps": 5,
        "prompts_per_concept": 1, "num_inference_steps": 2, "sld_presets": [],
        "embedding_strengths": (),
        "regularity": False, "lr_scales": [], "stability_seeds": 1, "closed_form": False,
        "strengths": (0.0, 1.0), "grid_images": 1, "attack_budget": 0, "cost_pairs": 1,
        "out": out, "progress": False, **overrides,
    }  # fmt: skip
    return CompareConfig(**fields)


def test_compare_runs_on_an_sd3_pipeline(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = run(_config(tmp_path / "cmp"), pipe=tiny_pipeline("sd3"))
    rows = {(r["method"], r["strength"]): r for r in data["rows"]}
    base, zero, full = rows[("base", 0.0)], rows[("lora r4", 0.0)], rows[("lora r4", 1.0)]
    assert {k: zero[k] for k in RATES} == {k: base[k] for k in RATES}  # strength 0 is the base
    assert 0.0 <= full["concept_rate"] <= 1.0
    state, _ = read_adapter(tmp_path / "cmp" / "adapters" / "lora-r4-b4-s0-reg-lr1.safetensors")
    assert state.denoiser == "transformer" and state.modules
    assert all(m.endswith(("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"))
               for m in state.modules)  # fmt: skip


def test_compare_runs_on_a_pixart_pipeline(tmp_path: Path) -> None:
    """PixArt has no diffusers adapter API: compare trains, sets strengths and unloads through
    peft's layers."""
    torch.set_num_threads(1)
    pipe = tiny_pipeline("pixart")
    data = run(_config(tmp_path / "cmp"), pipe=pipe)
    rows = {(r["method"], r["strength"]): r for r in data["rows"]}
    base, zero = rows[("base", 0.0)], rows[("lora r4", 0.0)]
    assert {k: zero[k] for k in RATES} == {k: base[k] for k in RATES}
    state, _ = read_adapter(tmp_path / "cmp" / "adapters" / "lora-r4-b4-s0-reg-lr1.safetensors",
                            unet=pipe.transformer)  # fmt: skip
    assert state.modules and all(".attn2." in m for m in state.modules)
    assert not getattr(pipe.transformer, "peft_config", None)  # every adapter unloaded


def test_compare_names_what_a_transformer_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--sld none, --embedding none and --attack-budget 0"):
        run(_config(tmp_path / "cmp", sld_presets=["strong"]), pipe=tiny_pipeline("sd3"))
    with pytest.raises(ValueError, match="text-embedding steering"):
        run(_config(tmp_path / "cmp2", embedding_strengths=(1.0,)), pipe=tiny_pipeline("sd3"))


def test_the_negative_prompt_acts_on_flux() -> None:
    """Flux ignores ``negative_prompt`` unless ``true_cfg_scale`` > 1: the sampler sets it."""
    torch.set_num_threads(1)
    sampler = Sampler(tiny_pipeline("flux"), num_inference_steps=2, guidance_scale=4.0,
                      extra={"max_sequence_length": 16})  # fmt: skip
    plain = np.asarray(sampler.sample(["a red cat"], [0])[0], dtype=float)
    negative = np.asarray(sampler.sample(["a red cat"], [0], negative_prompt="red")[0], dtype=float)
    assert np.abs(negative - plain).max() > 1.0  # 8-bit pixel values
