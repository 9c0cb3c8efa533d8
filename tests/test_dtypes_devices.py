"""The layer on the dtypes and compiled UNets production runs: bfloat16 on CPU here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_lora_file, tiny_pipeline

ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]


def policy(lora: Path, scale: float = 1.0, mode: str = "dynamic") -> Policy:
    adapter = {"path": str(lora), "categories": ["sexual"], "scale": scale}
    steering = {"mode": mode, "adapters": [adapter]}
    return Policy.model_validate({"classifiers": ZERO, "steering": steering})


def images(pipe: Any) -> np.ndarray:
    out = pipe("a red cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")  # fmt: skip
    return np.asarray(out.images)


def bf16() -> Any:
    return tiny_pipeline().to(dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("lora") / "l.safetensors"
    return tiny_lora_file(tiny_pipeline(), path, std=0.2)


@pytest.mark.filterwarnings("ignore:There are modules in .* that should be kept in float32")
def test_bfloat16_pipeline_is_steered_like_float32(lora: Path) -> None:
    base = images(bf16())
    assert np.array_equal(images(SafePipeline(bf16(), policy(lora, 0.0))), base)
    steered = SafePipeline(bf16(), policy(lora))
    layer = steered.steering._layers[0]
    assert layer.lora_A["l"].weight.dtype == torch.bfloat16  # cast to the UNet's dtype
    got = images(steered)
    assert got.dtype == np.float32 and np.abs(got - base).max() > 5e-2
    reference = images(SafePipeline(tiny_pipeline(), policy(lora)))
    np.testing.assert_allclose(got, reference, atol=5e-2)  # bf16 rounding only
    fused = images(SafePipeline(bf16(), policy(lora, mode="fused")))
    np.testing.assert_allclose(fused, got, atol=3e-2)


def test_a_compiled_unet_is_refused_before_wrapping(lora: Path) -> None:
    pipe = tiny_pipeline()
    pipe.unet = torch.compile(pipe.unet, backend="eager")
    with pytest.raises(ValueError, match=r"torch\.compile'd: wrap the pipeline first"):
        SafePipeline(pipe, policy(lora))


def test_compiling_after_wrapping_keeps_steering_and_strengths(lora: Path) -> None:
    safe = SafePipeline(tiny_pipeline(), policy(lora))
    plain = SafePipeline(tiny_pipeline(), policy(lora))
    safe.pipe.unet = torch.compile(safe.pipe.unet, backend="eager")
    np.testing.assert_allclose(images(safe), images(plain), atol=1e-6)
    with safe.steering.apply({"l": 0.0}, {}), plain.steering.apply({"l": 0.0}, {}):
        off = images(safe.pipe)  # a new strength after compiling is honoured
        np.testing.assert_allclose(off, images(plain.pipe), atol=1e-6)
    assert np.abs(off - images(safe)).max() > 1e-3


@pytest.mark.filterwarnings("ignore:There are modules in .* that should be kept in float32")
def test_closed_form_on_a_bfloat16_pipeline_matches_the_float32_solve() -> None:
    from safety_lora.adapters import read_adapter
    from safety_lora.closed_form import ClosedFormConfig, solved_adapter

    config = ClosedFormConfig(erase=["nude"], templates=["a {} person"], preserve=["a dog"])
    half, full = solved_adapter(bf16(), config), solved_adapter(tiny_pipeline(), config)
    a, b = read_adapter(half.path)[0], read_adapter(full.path)[0]
    assert a.modules.keys() == b.modules.keys()
    for path in a.modules:
        da, db = a.delta(path), b.delta(path)
        assert da.dtype == torch.float32  # solved in float, cast on load
        # the bf16 text encoder's states differ from float32's by a few percent; the solve
        # uses what this pipeline's UNet will see
        assert (da - db).norm() <= 0.1 * db.norm()
    entry = {"closed_form": config.model_dump(), "categories": ["sexual"]}
    pol = Policy.model_validate({"classifiers": ZERO, "steering": {"adapters": [entry]}})
    steered = images(SafePipeline(bf16(), pol))
    assert np.abs(steered - images(bf16())).max() > 1e-3
