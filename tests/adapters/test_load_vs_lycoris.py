"""Files written by the LyCORIS package load through ours and give LyCORIS' own outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _adapter_fixtures import LYCORIS_ROWS, base_unet, lycoris_file, unet_out

from safety_lora.adapters import load_adapter

TOL = 1e-5
FAMILY = {"loha": "loha", "lokr": "lokr", "full": "full", "locon": "lora"}


@pytest.mark.parametrize(("row", "kwargs"), LYCORIS_ROWS, ids=[r for r, _ in LYCORIS_ROWS])
def test_matches_lycoris_application(tmp_path: Path, row: str, kwargs: dict[str, Any]) -> None:
    path, lyco_unet, net = lycoris_file(tmp_path / f"{row}.safetensors", kwargs)
    base = base_unet()
    base_out = unet_out(base)
    info = load_adapter(base, path, adapter_name="steer")
    assert info.family == FAMILY[row.split("-")[0]]
    assert len(info.modules) == len(net.loras)
    ours = unet_out(base)
    theirs = unet_out(lyco_unet)
    assert (theirs - base_out).abs().max() > 0.1  # the adapter does something
    assert (ours - theirs).abs().max() <= TOL

    # Half strength through diffusers' API == LyCORIS at multiplier 0.5 (DoRA's strengths
    # differ: peft scales up @ down inside the norm, LyCORIS the renormalisation outside it).
    base.set_adapters(["steer"], [0.5])
    for lora in net.loras:
        lora.multiplier = 0.5
    half_gap = (unet_out(base) - unet_out(lyco_unet)).abs().max()
    assert half_gap > 1e-3 if "dora" in row else half_gap <= TOL
    for lora in net.loras:
        lora.multiplier = 1.0

    # Fuse / unfuse / disable / enable, all through diffusers' UNet API.
    base.set_adapters(["steer"], [1.0])
    base.fuse_lora(lora_scale=1.0)
    assert (unet_out(base) - theirs).abs().max() <= TOL
    base.unfuse_lora()
    assert (unet_out(base) - theirs).abs().max() <= TOL
    base.disable_lora()
    assert (unet_out(base) - base_out).abs().max() <= TOL
    base.enable_lora()
    assert (unet_out(base) - theirs).abs().max() <= TOL

    # Removing the adapter restores the UNet (fuse/unfuse subtract in float: rounding only).
    base.delete_adapters("steer")
    assert (unet_out(base) - base_out).abs().max() <= TOL


@pytest.mark.parametrize(
    ("row", "kwargs"), LYCORIS_ROWS[::3], ids=[r for r, _ in LYCORIS_ROWS[::3]]
)
def test_delete_without_fusing_restores_exactly(
    tmp_path: Path, row: str, kwargs: dict[str, Any]
) -> None:
    path, _, _ = lycoris_file(tmp_path / f"{row}.safetensors", kwargs)
    unet = base_unet()
    before = unet_out(unet)
    load_adapter(unet, path, adapter_name="steer")
    unet.delete_adapters("steer")
    assert torch.equal(unet_out(unet), before)
