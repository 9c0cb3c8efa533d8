"""Module selection: ESD-x is cross-attention only, ESD-u everything else."""

from __future__ import annotations

import pytest

from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.training import target_modules


def test_esd_x_is_every_cross_attention_projection_and_nothing_else() -> None:
    unet = tiny_pipeline().unet
    names = target_modules(unet, "esd-x")
    assert names and all(".attn2." in n for n in names)
    assert {n.rsplit("attn2.", 1)[1] for n in names} == {"to_q", "to_k", "to_v", "to_out.0"}
    assert len(names) == 4 * sum(1 for n, _ in unet.named_modules() if n.endswith(".attn2"))


def test_esd_u_excludes_cross_attention_and_embeddings() -> None:
    unet = tiny_pipeline().unet
    names = target_modules(unet, "esd-u")
    assert not [n for n in names if ".attn2." in n or n.startswith("time_embedding")]
    assert any(".attn1.to_k" in n for n in names)
    assert "conv_in" in names
    assert not set(names) & set(target_modules(unet, "esd-x"))


def test_override_by_suffix_keeps_self_attention_out() -> None:
    unet = tiny_pipeline().unet
    names = target_modules(unet, "esd-u", ["attn2.to_k"])
    assert names and all(n.endswith("attn2.to_k") for n in names)


def test_override_matching_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"entries \['to_nothing'\] match no Linear/Conv2d"):
        target_modules(tiny_pipeline().unet, "esd-x", ["to_nothing"])
