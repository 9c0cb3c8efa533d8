"""Steering on transformer denoisers (``pipe.transformer``): tiny SD3 and Flux pipelines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from safety_lora.adapters import AdapterFormatError, convert, read_adapter
from safety_lora.cli import app
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_lora_file, tiny_pipeline

ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]
KINDS = ["sd3", "flux"]


def policy(lora: Path, scale: float = 1.0, mode: str = "dynamic") -> Policy:
    adapter = {"path": str(lora), "categories": ["sexual"], "scale": scale}
    steering = {"mode": mode, "adapters": [adapter]}
    return Policy.model_validate({"classifiers": ZERO, "steering": steering})


def images(pipe: Any, kind: str) -> np.ndarray:
    extra = {"max_sequence_length": 16} if kind == "flux" else {}
    out = pipe("a red cat", num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0), **extra)  # fmt: skip
    return np.asarray(out.images)


@pytest.mark.parametrize("kind", KINDS)
def test_steering_a_transformer_denoiser(tmp_path: Path, kind: str) -> None:
    lora = tiny_lora_file(tiny_pipeline(kind), tmp_path / f"{kind}.safetensors", std=0.3)  # type: ignore[arg-type]
    base = images(tiny_pipeline(kind), kind)  # type: ignore[arg-type]
    off = SafePipeline(tiny_pipeline(kind), policy(lora, 0.0))  # type: ignore[arg-type]
    assert off.steering.part == "transformer"
    np.testing.assert_array_equal(images(off, kind), base)
    steered = images(SafePipeline(tiny_pipeline(kind), policy(lora)), kind)  # type: ignore[arg-type]
    assert np.abs(steered - base).max() > 1e-3
    theirs = tiny_pipeline(kind)  # type: ignore[arg-type]
    theirs.load_lora_weights(str(lora), adapter_name="a")
    np.testing.assert_allclose(steered, images(theirs, kind), atol=1e-5)
    fused = SafePipeline(tiny_pipeline(kind), policy(lora, mode="fused"))  # type: ignore[arg-type]
    np.testing.assert_allclose(images(fused, kind), steered, atol=1e-5)
    fused.close()
    np.testing.assert_allclose(images(fused.pipe, kind), base, atol=1e-6)


def test_transformer_adapters_convert_to_peft_and_lycoris(tmp_path: Path) -> None:
    pipe = tiny_pipeline("flux")
    lora = tiny_lora_file(pipe, tmp_path / "flux.safetensors")
    state, fmt = read_adapter(lora, unet=pipe.transformer)
    assert (fmt, state.denoiser) == ("peft", "transformer")
    for to in ("peft", "lycoris"):
        out = tmp_path / f"again-{to}.safetensors"
        convert(lora, out, to=to, unet=pipe.transformer)  # type: ignore[arg-type]
        again = read_adapter(out, unet=pipe.transformer)[0]
        assert again.modules.keys() == state.modules.keys() and again.denoiser == "transformer"
        for path, weights in state.modules.items():
            for name, tensor in weights.tensors.items():
                torch.testing.assert_close(again.modules[path].tensors[name], tensor)
    keys = safe_open(str(tmp_path / "again-lycoris.safetensors"), "pt").keys()
    starts = ("lycoris_transformer_blocks_", "lycoris_single_transformer_blocks_")
    assert {next(s for s in starts if k.startswith(s)) for k in keys} == set(starts)
    with pytest.raises(AdapterFormatError, match="write it as peft or lycoris"):
        convert(lora, tmp_path / "k.safetensors", to="kohya", unet=pipe.transformer)


def test_inspect_reads_a_transformer_file_without_a_model(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd3")
    lora = tiny_lora_file(pipe, tmp_path / "sd3.safetensors")
    result = CliRunner().invoke(app, ["inspect", str(lora), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    expected = read_adapter(lora, unet=pipe.transformer)[0]
    assert (info["denoiser"], info["format"]) == ("transformer", "peft")
    assert info["targets"] == sorted(expected.modules)


def test_sld_guidance_needs_a_unet(tmp_path: Path) -> None:
    guidance = {"concepts": ["nude"], "preset": "medium", "categories": ["sexual"]}
    pol = Policy.model_validate({"classifiers": ZERO, "steering": {"guidance": guidance}})
    with pytest.raises(ValueError, match="SLD guidance needs a pipeline with a `unet`"):
        SafePipeline(tiny_pipeline("sd3"), pol)


def test_pixart_is_refused_by_name_where_it_is_not_supported(tmp_path: Path) -> None:
    """PixArt's transformer has no diffusers PEFT support (no ``set_adapters``): steering,
    ESD and closed-form erasure refuse it with its name instead of failing deep inside.
    """
    from safety_lora.closed_form import ClosedFormConfig, erase
    from safety_lora.training import TrainConfig
    from safety_lora.training.esd import EsdTrainer

    pipe = tiny_pipeline("pixart")
    lora = tiny_lora_file(pipe, tmp_path / "pixart.safetensors")
    assert read_adapter(lora, unet=pipe.transformer)[0].denoiser == "transformer"
    with pytest.raises(ValueError, match="PixArtTransformer2DModel, which has no diffusers PEFT"):
        SafePipeline(pipe, policy(lora))
    config = TrainConfig(erase=[{"concept": "red"}], out=tmp_path / "esd.safetensors")
    with pytest.raises(ValueError, match="not PixArtTransformer2DModel"):
        EsdTrainer(pipe, config)
    with pytest.raises(ValueError, match="not PixArtTransformer2DModel"):
        erase(ClosedFormConfig(erase=["red"]), out=tmp_path / "cf.safetensors", pipe=pipe)
