"""Exact round trips between formats, and our kohya export read by diffusers' own loader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _adapter_fixtures import LYCORIS_ROWS, base_unet, lycoris_file, unet_out
from safetensors.torch import load_file, safe_open

from safety_lora.adapters import (
    AdapterFormatError,
    convert,
    detect_format,
    load_adapter,
    read_adapter,
)
from safety_lora.adapters.convert import to_lora_svd
from safety_lora.testing import tiny_lora_file, tiny_pipeline

TOL = 1e-5


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _peft_file(tmp_path: Path) -> Path:
    # alpha != rank, so a lost alpha would show.
    return tiny_lora_file(tiny_pipeline("sd"), tmp_path / "peft.safetensors", rank=4, alpha=2.0)


def test_peft_kohya_peft_is_exact(tmp_path: Path) -> None:
    src = _peft_file(tmp_path)
    unet = base_unet()
    assert convert(src, tmp_path / "k.safetensors", to="kohya", unet=unet).exact
    assert detect_format(tmp_path / "k.safetensors") == "kohya"
    kohya = load_file(tmp_path / "k.safetensors")
    assert all(v.item() == 2.0 for k, v in kohya.items() if k.endswith(".alpha"))
    convert(tmp_path / "k.safetensors", tmp_path / "back.safetensors", to="peft", unet=unet)
    a, b = load_file(src), load_file(tmp_path / "back.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads(_metadata(tmp_path / "back.safetensors")["lora_adapter_metadata"])
    assert config["unet.lora_alpha"] == 2.0 and config["unet.r"] == 4


@pytest.mark.parametrize(("row", "kwargs"), LYCORIS_ROWS, ids=[r for r, _ in LYCORIS_ROWS])
def test_lycoris_ours_lycoris_is_exact(tmp_path: Path, row: str, kwargs: dict[str, Any]) -> None:
    src, _, _ = lycoris_file(tmp_path / "src.safetensors", kwargs)
    unet = base_unet()
    report = convert(src, tmp_path / "out.safetensors", to="lycoris", unet=unet)
    assert report.exact and report.overall_error == 0.0
    a, b = load_file(src), load_file(tmp_path / "out.safetensors")
    assert a.keys() == {k.replace("lora_unet_", "lycoris_") for k in b}
    assert all(torch.equal(a[k.replace("lora_unet_", "lycoris_")], b[k]) for k in b)
    assert _metadata(tmp_path / "out.safetensors")["ss_sd_model_hash"] == "tiny-sd"


def test_kohya_peft_kohya_is_exact(tmp_path: Path) -> None:
    src, _, _ = lycoris_file(tmp_path / "locon.safetensors", {"algo": "locon"})
    unet = base_unet()
    convert(src, tmp_path / "p.safetensors", to="peft", unet=unet)
    convert(tmp_path / "p.safetensors", tmp_path / "k.safetensors", to="kohya", unet=unet)
    a, b = load_file(src), load_file(tmp_path / "k.safetensors")
    assert all(torch.equal(a[k.replace("lora_unet_", "lycoris_")], b[k]) for k in b)
    assert len(a) == len(b)


@pytest.mark.parametrize("source", ["peft", "locon"])
def test_kohya_export_loads_in_diffusers(tmp_path: Path, source: str) -> None:
    pipe = tiny_pipeline("sd")
    if source == "peft":
        src = _peft_file(tmp_path)
    else:
        src, _, _ = lycoris_file(tmp_path / "locon.safetensors", {"algo": "locon"})
    out = tmp_path / "kohya.safetensors"
    convert(src, out, to="kohya", unet=pipe.unet)
    base = unet_out(pipe.unet)
    pipe.load_lora_weights(str(out), adapter_name="k")  # diffusers' own kohya reader
    theirs = unet_out(pipe.unet)
    ours_unet = base_unet()
    load_adapter(ours_unet, out, adapter_name="k")
    assert (theirs - base).abs().max() > 0.1
    assert (unet_out(ours_unet) - theirs).abs().max() <= TOL


def test_peft_export_keeps_alpha_in_diffusers(tmp_path: Path) -> None:
    src, _, _ = lycoris_file(tmp_path / "locon.safetensors", {"algo": "locon"})
    out = tmp_path / "p.safetensors"
    pipe = tiny_pipeline("sd")
    convert(src, out, to="peft", unet=pipe.unet)
    pipe.load_lora_weights(str(out), adapter_name="p")
    ours = base_unet()
    load_adapter(ours, src, adapter_name="l")
    assert (unet_out(pipe.unet) - unet_out(ours)).abs().max() <= TOL


def test_read_state_matches_file(tmp_path: Path) -> None:
    src, _, net = lycoris_file(tmp_path / "loha.safetensors", {"algo": "loha"})
    state, fmt = read_adapter(src, unet=base_unet())
    assert (fmt, state.family) == ("lycoris", "loha")
    assert len(state.modules) == len(net.loras)
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    assert state.rank(path) == 4 and state.scale(path) == 0.5
    assert state.delta(path).shape == (32, 32)


@pytest.mark.parametrize("row", ["locon-tucker", "locon-dora"])
def test_tucker_and_dora_convert_to_peft_and_load_in_diffusers(tmp_path: Path, row: str) -> None:
    src, lyco_unet, _ = lycoris_file(tmp_path / "src.safetensors", dict(LYCORIS_ROWS)[row])
    pipe = tiny_pipeline("sd")
    out = tmp_path / "peft.safetensors"
    assert convert(src, out, to="peft", unet=pipe.unet).exact
    keys = set(load_file(out))
    assert not any("lora_mid" in k for k in keys)  # the Tucker core is folded into lora_A
    assert any(k.endswith("lora_magnitude_vector") for k in keys) == (row == "locon-dora")
    theirs = unet_out(lyco_unet)
    ours = base_unet()
    load_adapter(ours, out, adapter_name="a")
    assert (unet_out(ours) - theirs).abs().max() <= TOL
    pipe.load_lora_weights(str(out), adapter_name="a")  # diffusers' own loader, same numbers
    assert (unet_out(pipe.unet) - theirs).abs().max() <= TOL
    back = tmp_path / "kohya.safetensors"
    convert(out, back, to="kohya", unet=pipe.unet)
    again = base_unet()
    load_adapter(again, back, adapter_name="a")
    assert (unet_out(again) - theirs).abs().max() <= TOL


def test_dora_has_no_plain_lora_approximation(tmp_path: Path) -> None:
    src, _, _ = lycoris_file(tmp_path / "src.safetensors", {"algo": "locon", "dora_wd": True})
    state, _ = read_adapter(src, unet=base_unet())
    assert state.dora
    with pytest.raises(AdapterFormatError, match="DoRA module's change depends on the base"):
        to_lora_svd(state)


def test_per_input_dora_is_refused_by_peft_with_the_module(tmp_path: Path) -> None:
    kwargs = {"algo": "locon", "dora_wd": True, "wd_on_output": False}
    src, _, _ = lycoris_file(tmp_path / "src.safetensors", kwargs)
    with pytest.raises(AdapterFormatError, match=r"normalises per input channel.*cannot repr"):
        load_adapter(base_unet(), src, adapter_name="a")
