"""Shared fixtures: a tiny ESD config (few steps, short DDIM schedule) on the tiny pipelines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from safety_lora.workbench.training import Erasure, TrainConfig

CONCEPT_TEMPLATES = ["a {} car", "a {} house", "a {} tree", "a photo of a {} dog"]
PRESERVE = ["a blue car", "a green tree", "a photo of a dog", "a blue house"]


def tiny_config(out: Path, **overrides: Any) -> TrainConfig:
    """Erase "red" (anchored: the concept removed) on a tiny pipeline in a few steps."""
    fields: dict[str, Any] = {
        "erase": [Erasure(concept="red", anchor="", templates=CONCEPT_TEMPLATES)],
        "preserve": PRESERVE,
        "steps": 6,
        "ddim_steps": 4,
        "batch": 2,
        "guidance_scale": 2.0,
        "eval_every": 2,
        "lr": 1e-2,
        "out": out,
        "progress": False,
        **overrides,
    }
    return TrainConfig(**fields)


@pytest.fixture
def config_factory(tmp_path: Path) -> Any:
    """``make(name, **overrides)``: a tiny config writing ``tmp_path/<name>.safetensors``."""

    def make(name: str = "adapter", **overrides: Any) -> TrainConfig:
        return tiny_config(tmp_path / f"{name}.safetensors", **overrides)

    return make


@pytest.fixture(scope="module")
def module_config_factory(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``config_factory`` for module-scoped runs (shared by tests): one folder per module."""
    folder = tmp_path_factory.mktemp("runs")

    def make(name: str = "adapter", **overrides: Any) -> TrainConfig:
        return tiny_config(folder / f"{name}.safetensors", **overrides)

    return make
