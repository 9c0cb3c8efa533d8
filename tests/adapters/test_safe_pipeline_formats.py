"""Every adapter family steers through SafePipeline exactly like its reference application."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_pipeline
from tests.adapters._adapter_fixtures import lycoris_file

ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]
ROWS = [("loha", {"algo": "loha"}), ("lokr", {"algo": "lokr"}), ("full", {"algo": "full"})]


def _policy(path: Path, scale: float) -> Policy:
    adapter = {"path": str(path), "categories": ["sexual"], "scale": scale}
    return Policy.model_validate({"classifiers": ZERO, "steering": {"adapters": [adapter]}})


def _run(pipe: Any) -> np.ndarray:
    out = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")  # fmt: skip
    return np.asarray(out.images)


@pytest.mark.parametrize(("row", "kwargs"), ROWS, ids=[r for r, _ in ROWS])
def test_lycoris_families_through_safe_pipeline(
    tmp_path: Path, row: str, kwargs: dict[str, Any]
) -> None:
    path, lycoris_unet, _ = lycoris_file(tmp_path / f"{row}.safetensors", kwargs)
    reference = tiny_pipeline()
    reference.unet = lycoris_unet  # LyCORIS' own application at multiplier 1
    expected = _run(reference)
    base = _run(tiny_pipeline())

    steered = _run(SafePipeline(tiny_pipeline(), _policy(path, 1.0)))
    np.testing.assert_allclose(steered, expected, atol=1e-4)
    assert np.abs(steered - base).max() > 1e-3

    off = _run(SafePipeline(tiny_pipeline(), _policy(path, 0.0)))
    np.testing.assert_allclose(off, base, atol=1e-6)
