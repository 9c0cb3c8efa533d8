"""Broken, tampered or mismatched adapter files are refused with errors naming the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _adapter_fixtures import base_unet, lycoris_file
from safetensors.torch import load_file, save_file

from safety_lora.adapters import (
    AdapterFormatError,
    AdapterIntegrityError,
    convert,
    detect_format,
    load_adapter,
)
from safety_lora.adapters.loading import sha256_of

TO_K = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
Edit = Callable[[dict[str, torch.Tensor]], None]


def _locon(tmp_path: Path) -> dict[str, torch.Tensor]:
    src, _, _ = lycoris_file(tmp_path / "src.safetensors", {"algo": "locon"})
    convert(src, tmp_path / "k.safetensors", to="kohya", unet=base_unet())
    return load_file(tmp_path / "k.safetensors")


def _set(key: str, value: torch.Tensor) -> Edit:
    return lambda sd: sd.__setitem__(key, value)


# One row per integrity failure: (id, edit of a valid kohya state dict, expected message part).
ROWS: list[tuple[str, Edit, str]] = [
    ("missing lora_up", lambda sd: sd.pop(f"{TO_K}.lora_up.weight"), "attn2.to_k: missing lora_up"),
    (
        "shape vs unet",
        _set(f"{TO_K}.lora_up.weight", torch.ones(48, 4)),
        "delta has shape (48, 32)",
    ),
    (
        "rank mismatch",
        _set(f"{TO_K}.lora_up.weight", torch.ones(32, 3)),
        "lora_down shape (4, 32) does not fit lora_up shape (32, 3)",
    ),
    (
        "int dtype",
        _set(f"{TO_K}.lora_down.weight", torch.ones(4, 32, dtype=torch.int32)),
        "attn2.to_k.lora_down: dtype torch.int32 is not a floating-point type",
    ),
    (
        "nan",
        _set(f"{TO_K}.lora_down.weight", torch.full((4, 32), float("nan"))),
        "attn2.to_k.lora_down: contains NaN or inf",
    ),
    (
        "inf",
        _set(f"{TO_K}.lora_up.weight", torch.full((32, 4), float("inf"))),
        "attn2.to_k.lora_up: contains NaN or inf",
    ),
    (
        "unknown module",
        _set("lora_unet_down_blocks_9_foo.lora_down.weight", torch.ones(4, 4)),
        "key 'lora_unet_down_blocks_9_foo.lora_down.weight': no UNet module",
    ),
    (
        "text encoder",
        _set("lora_te_text_model_x.lora_down.weight", torch.ones(4, 4)),
        "no text_encoder module is named 'text_model_x'",
    ),
]


@pytest.mark.parametrize(("row", "edit", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_broken_file_is_refused(tmp_path: Path, row: str, edit: Edit, message: str) -> None:
    sd = _locon(tmp_path)
    edit(sd)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    unet = base_unet()
    with pytest.raises(AdapterFormatError, match=r"bad\.safetensors") as info:
        load_adapter(unet, bad, adapter_name="x")
    assert message in str(info.value)
    assert "x" not in (getattr(unet, "peft_config", None) or {})  # nothing left half-loaded


def test_truncated_file(tmp_path: Path) -> None:
    _locon(tmp_path)
    data = (tmp_path / "k.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterFormatError, match=r"cut.safetensors.*truncated or corrupt"):
        load_adapter(base_unet(), tmp_path / "cut.safetensors", adapter_name="x")


def test_not_safetensors_is_never_unpickled(tmp_path: Path) -> None:
    (tmp_path / "a.ckpt").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(AdapterFormatError, match=r"only \.safetensors"):
        load_adapter(base_unet(), tmp_path / "a.ckpt", adapter_name="x")


def test_unknown_format_names_file_and_keys(tmp_path: Path) -> None:
    save_file(
        {"model.layer.weight": torch.ones(2), "other": torch.ones(1)},
        str(tmp_path / "odd.safetensors"),
    )
    with pytest.raises(AdapterFormatError) as info:
        detect_format(tmp_path / "odd.safetensors")
    text = str(info.value)
    assert "odd.safetensors" in text and "unknown adapter format" in text
    assert "model.layer.weight, other" in text


def test_sha256_pin(tmp_path: Path) -> None:
    _locon(tmp_path)
    path = tmp_path / "k.safetensors"
    good = sha256_of(path)
    assert load_adapter(base_unet(), path, adapter_name="a", sha256=good).sha256 == good
    with pytest.raises(AdapterIntegrityError, match=f"sha256 is {good}, the pin is 0{{64}}"):
        load_adapter(base_unet(), path, adapter_name="a", sha256="0" * 64)


def test_adapter_for_another_unet(tmp_path: Path) -> None:
    src, _, _ = lycoris_file(tmp_path / "loha.safetensors", {"algo": "loha"})
    other = base_unet()
    # Same module names, different widths: a cross-attention dim of 64 instead of 32.
    from diffusers import UNet2DConditionModel

    wide = UNet2DConditionModel(**{**dict(other.config), "cross_attention_dim": 64})
    with pytest.raises(AdapterFormatError) as info:
        load_adapter(wide, src, adapter_name="x")
    assert "attn2.to_k" in str(info.value) and "(32, 64)" in str(info.value)


def test_duplicate_name(tmp_path: Path) -> None:
    src, _, _ = lycoris_file(tmp_path / "full.safetensors", {"algo": "full"})
    unet = base_unet()
    load_adapter(unet, src, adapter_name="a")
    with pytest.raises(ValueError, match="'a' is already loaded"):
        load_adapter(unet, src, adapter_name="a")
