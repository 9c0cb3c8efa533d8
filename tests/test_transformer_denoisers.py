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
    extra: dict[str, Any] = {"max_sequence_length": 16} if kind in ("flux", "pixart") else {}
    if kind == "pixart":  # a 32 px sample is in no aspect-ratio bin
        extra.update(use_resolution_binning=False, clean_caption=False)
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


def test_pixart_is_steered_through_peft_alone(tmp_path: Path) -> None:
    """PixArt's transformer has no diffusers adapter API (no ``set_adapters``, no LoRA loader):
    steering goes through peft's layers directly, and matches the LoRA merged by hand."""
    model = tiny_pipeline("pixart").transformer
    lora = tiny_lora_file(tiny_pipeline("pixart"), tmp_path / "pixart.safetensors", std=0.3)
    assert read_adapter(lora, unet=model)[0].denoiser == "transformer"
    base = images(tiny_pipeline("pixart"), "pixart")
    off = SafePipeline(tiny_pipeline("pixart"), policy(lora, 0.0))
    np.testing.assert_array_equal(images(off, "pixart"), base)
    steered = images(SafePipeline(tiny_pipeline("pixart"), policy(lora)), "pixart")
    assert np.abs(steered - base).max() > 1e-3
    by_hand = tiny_pipeline("pixart")
    with safe_open(str(lora), "pt") as f, torch.no_grad():
        for key in [k for k in f.keys() if k.endswith("lora_A.weight")]:  # noqa: SIM118
            path = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            layer = by_hand.transformer.get_submodule(path)
            b = f.get_tensor(key.replace("lora_A", "lora_B"))
            layer.weight += b @ f.get_tensor(key)  # alpha = rank: scale 1
    np.testing.assert_allclose(steered, images(by_hand, "pixart"), atol=1e-5)
    fused = SafePipeline(tiny_pipeline("pixart"), policy(lora, mode="fused"))
    np.testing.assert_allclose(images(fused, "pixart"), steered, atol=1e-5)
    fused.close()
    np.testing.assert_allclose(images(fused.pipe, "pixart"), base, atol=1e-6)
