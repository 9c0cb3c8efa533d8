"""The private parts of diffusers and peft behind ``safety_lora.internals`` still behave as the
layer relies on: an upgrade that changes one fails here, by name."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from safety_lora.internals import (
    execution_device,
    kronecker_split,
    mark_peft_loaded,
    without_safety_checker,
)
from safety_lora.testing import tiny_pipeline


def test_diffusers_reads_the_peft_loaded_flag() -> None:
    """Adapters peft injected directly are usable through diffusers' API once flagged."""
    from peft import LoraConfig, inject_adapter_in_model

    unet = tiny_pipeline().unet
    inject_adapter_in_model(LoraConfig(r=2, target_modules=["attn2.to_k"]), unet, "a")
    with pytest.raises(ValueError, match="No adapter loaded"):
        unet.active_adapters()
    mark_peft_loaded(unet)
    assert unet.active_adapters() == ["a"]
    unet.set_adapters(["a"], [0.5])
    unet.delete_adapters(["a"])
    assert not getattr(unet, "peft_config", None)


@pytest.mark.parametrize(
    ("dimension", "factor", "split"),
    [(64, -1, (8, 8)), (96, -1, (8, 12)), (64, 4, (4, 16)), (48, 8, (8, 6))],
)
def test_peft_splits_kronecker_factors_as_lycoris_files_expect(
    dimension: int, factor: int, split: tuple[int, int]
) -> None:
    assert kronecker_split(dimension, factor) == split


def test_the_execution_device_is_the_pipelines() -> None:
    assert execution_device(tiny_pipeline()) == torch.device("cpu")


def test_the_safety_checker_is_off_for_the_block_and_the_config_untouched() -> None:
    pipe: Any = tiny_pipeline()
    checker = torch.nn.Identity()
    object.__setattr__(pipe, "safety_checker", checker)
    config = dict(pipe.config)
    with without_safety_checker(pipe):
        assert pipe.safety_checker is None
    assert pipe.safety_checker is checker
    assert dict(pipe.config) == config
    with pytest.raises(RuntimeError), without_safety_checker(pipe):
        raise RuntimeError("the call failed")
    assert pipe.safety_checker is checker  # restored on failure too
