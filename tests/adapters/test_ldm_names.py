"""kohya files with LDM/SGM module names (sd-scripts' SDXL files): read, applied, exported.

The reference is diffusers' own kohya loader: its name map, and its ``load_lora_weights``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from _adapter_fixtures import kohya_lora_file, kohya_stems
from diffusers import UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft
from safetensors.torch import load_file, save_file

from safety_lora.adapters import (
    AdapterFormatError,
    ModuleIndex,
    convert,
    load_adapter,
    read_adapter,
)
from safety_lora.adapters.ldm_names import UnetLayout, ldm_stem
from safety_lora.adapters.names import SD15_UNET, SDXL_UNET
from safety_lora.testing import tiny_pipeline


def diffusers_map(stems: list[str], layers_per_block: int) -> dict[str, str]:
    """The module path diffusers' kohya loader gives each stem (1x1 probe LoRAs tagged by index)."""
    probe: dict[str, torch.Tensor] = {}
    for i, stem in enumerate(stems):
        probe[f"lora_unet_{stem}.lora_down.weight"] = torch.full((1, 1), float(i))
        probe[f"lora_unet_{stem}.lora_up.weight"] = torch.full((1, 1), float(i))
    config = SimpleNamespace(layers_per_block=layers_per_block)
    mapped, _ = StableDiffusionLoraLoaderMixin.lora_state_dict(probe, unet_config=config)
    unet = {k.removeprefix("unet."): v for k, v in mapped.items()}
    return {
        stems[int(v.item())]: k.removesuffix(".lora_A.weight")
        for k, v in convert_unet_state_dict_to_peft(unet).items()
        if k.endswith(".lora_A.weight")
    }


def meta_index(config: dict[str, Any]) -> ModuleIndex:
    with torch.device("meta"):
        return ModuleIndex.from_model(UNet2DConditionModel(**config))


def test_every_sdxl_module_gets_the_name_diffusers_maps_back_to_it() -> None:
    index = meta_index(SDXL_UNET)
    assert index.layout == UnetLayout.sdxl_base()
    ours = {ldm_stem(p, index.layout): p for p in index.shapes}
    assert None not in ours and len(ours) == len(index.shapes) == 794
    assert diffusers_map(list(ours), 2) == ours  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "stem", "path"),
    [
        (
            SDXL_UNET,
            "input_blocks_4_1_transformer_blocks_0_attn2_to_k",
            "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
        ),
        (
            SDXL_UNET,
            "input_blocks_8_1_transformer_blocks_9_ff_net_0_proj",
            "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.0.proj",
        ),
        (SDXL_UNET, "input_blocks_3_0_op", "down_blocks.0.downsamplers.0.conv"),
        (SDXL_UNET, "middle_block_1_proj_out", "mid_block.attentions.0.proj_out"),
        (SDXL_UNET, "output_blocks_5_2_conv", "up_blocks.1.upsamplers.0.conv"),
        (SDXL_UNET, "output_blocks_6_0_skip_connection", "up_blocks.2.resnets.0.conv_shortcut"),
        (SDXL_UNET, "label_emb_0_2", "add_embedding.linear_2"),
        # SD 1.x LDM names, which diffusers' loader misreads (input_blocks_1 also matches _10)
        (
            SD15_UNET,
            "input_blocks_1_1_transformer_blocks_0_attn2_to_v",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v",
        ),
        (SD15_UNET, "input_blocks_11_0_in_layers_2", "down_blocks.3.resnets.1.conv1"),
        (SD15_UNET, "output_blocks_2_1_conv", "up_blocks.0.upsamplers.0.conv"),
        (SD15_UNET, "output_blocks_11_1_proj_in", "up_blocks.3.attentions.2.proj_in"),
    ],
)
def test_known_sd_scripts_names_resolve(config: dict[str, Any], stem: str, path: str) -> None:
    assert meta_index(config).resolve(stem, key=stem) == path


def kohya_file(unet: torch.nn.Module, path: Path, *, ldm: bool) -> Path:
    """A random kohya LoRA/LoCon on every Linear/Conv2d of ``unet`` (LDM or diffusers names)."""
    return kohya_lora_file(path, {"lora_unet_": kohya_stems(unet, ldm=ldm)})


def unet_out(pipe: Any) -> torch.Tensor:
    """The UNet's output for fixed inputs (SDXL's added conditioning when it has one)."""
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 5, cfg.cross_attention_dim, generator=g)
    extra: dict[str, Any] = {}
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, pooled, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2),
        }
    with torch.no_grad():
        out: torch.Tensor = unet(
            sample, torch.tensor([10, 500]), encoder_hidden_states=text, **extra
        ).sample
    return out


@pytest.mark.parametrize(("kind", "ldm"), [("sdxl", True), ("sd", False)])
def test_kohya_file_gives_what_diffusers_load_lora_weights_gives(
    tmp_path: Path, kind: str, ldm: bool
) -> None:
    ours = tiny_pipeline(kind, real_blocks=True)  # type: ignore[arg-type]
    theirs = copy.deepcopy(ours)
    base = unet_out(ours)
    path = kohya_file(ours.unet, tmp_path / "kohya.safetensors", ldm=ldm)
    info = load_adapter(ours.unet, path, adapter_name="a")
    theirs.load_lora_weights(str(path), adapter_name="a")
    assert len(info.modules) == len(ModuleIndex.from_model(theirs.unet).shapes)
    got, want = unet_out(ours), unet_out(theirs)
    assert (got - base).abs().max() > 1e-2  # the adapter does something
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_sd15_ldm_names_load_like_diffusers_names(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd", real_blocks=True)
    a = read_adapter(kohya_file(pipe.unet, tmp_path / "ldm.safetensors", ldm=True), unet=pipe.unet)
    b = read_adapter(kohya_file(pipe.unet, tmp_path / "hf.safetensors", ldm=False), unet=pipe.unet)
    assert a[0].modules.keys() == b[0].modules.keys()
    for module_path in a[0].modules:
        assert torch.equal(a[0].delta(module_path), b[0].delta(module_path))


def test_sdxl_kohya_export_has_ldm_names_and_loads_in_diffusers(tmp_path: Path) -> None:
    ours = tiny_pipeline("sdxl", real_blocks=True)
    theirs = copy.deepcopy(ours)
    source = kohya_file(ours.unet, tmp_path / "src.safetensors", ldm=False)
    peft = tmp_path / "peft.safetensors"
    convert(source, peft, to="peft", unet=ours.unet)
    out = tmp_path / "kohya.safetensors"
    convert(peft, out, to="kohya", unet=ours.unet)
    keys = set(load_file(str(out)))
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert not any(k.startswith("lora_unet_down_blocks") for k in keys)
    load_adapter(ours.unet, peft, adapter_name="a")
    theirs.load_lora_weights(str(out), adapter_name="a")
    assert torch.allclose(unet_out(ours), unet_out(theirs), atol=1e-5, rtol=0)


def test_ldm_file_without_base_keeps_its_names_on_export(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sdxl", real_blocks=True)
    source = kohya_file(pipe.unet, tmp_path / "src.safetensors", ldm=True)
    out = tmp_path / "out.safetensors"
    convert(source, out, to="kohya")  # resolved against the reference SDXL layout
    assert set(load_file(str(out))) == set(load_file(str(source)))


def test_a_name_in_neither_naming_is_refused_with_the_key(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sdxl", real_blocks=True)
    path = tmp_path / "bad.safetensors"
    key = "lora_unet_input_blocks_40_1_proj_in.lora_down.weight"
    save_file({key: torch.ones(2, 32), key.replace("down", "up"): torch.ones(32, 2)}, str(path))
    with pytest.raises(AdapterFormatError, match=r"input_blocks_40_1_proj_in.*LDM/SGM"):
        read_adapter(path, unet=pipe.unet)
