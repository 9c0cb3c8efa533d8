"""The original (LDM/SGM) UNet module names of kohya SDXL files <-> diffusers module paths.

kohya/sd-scripts trains SDXL on the original SGM UNet, so its files name modules
``input_blocks_4_1_transformer_blocks_0_attn2_to_k``. One map serves reading and writing:
:func:`ldm_stem` gives each module of the UNet its LDM name (reading inverts it over the
UNet's modules, like the diffusers-name stems). The tests check it against diffusers' kohya
loader (``lora_state_dict``) on every module of the SDXL layout; it also reads SD 1.x
LDM-named files, which diffusers' loader maps wrongly (``input_blocks_1`` vs ``_10``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["UnetLayout", "ldm_stem"]

#: Modules outside the blocks: diffusers path -> LDM stem.
_TOP = {
    "conv_in": "input_blocks_0_0",
    "time_embedding.linear_1": "time_embed_0",
    "time_embedding.linear_2": "time_embed_2",
    "add_embedding.linear_1": "label_emb_0_0",
    "add_embedding.linear_2": "label_emb_0_2",
    "conv_out": "out_2",
}
#: Resnet layers: diffusers name -> LDM name.
_RESNET = {
    "conv1": "in_layers_2",
    "conv2": "out_layers_3",
    "time_emb_proj": "emb_layers_1",
    "conv_shortcut": "skip_connection",
}


@dataclass(frozen=True)
class UnetLayout:
    """The block structure that maps diffusers paths to the original LDM/SGM names.

    ``sdxl``: the SDXL family, whose kohya files use the LDM names (``input_blocks_4_1_...``);
    SD 1.x/2.x kohya files use the diffusers names.
    """

    layers_per_block: int
    up_has_attention: tuple[bool, ...]
    sdxl: bool

    @classmethod
    def sdxl_base(cls) -> UnetLayout:
        """The SDXL base UNet's layout."""
        return cls(layers_per_block=2, up_has_attention=(True, True, False), sdxl=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UnetLayout | None:
        """The layout of a ``UNet2DConditionModel`` config (``None`` for other models)."""
        up = config.get("up_block_types")
        layers = config.get("layers_per_block")
        if not up or not isinstance(layers, int):  # per-block depths have no LDM naming
            return None
        return cls(
            layers_per_block=layers,
            up_has_attention=tuple("CrossAttn" in t for t in up),
            sdxl=config.get("addition_embed_type") == "text_time",
        )


def ldm_stem(path: str, layout: UnetLayout) -> str | None:
    """The LDM/SGM kohya stem of a diffusers UNet module path (``down_blocks.1.attentions.0.
    proj_in`` -> ``input_blocks_4_1_proj_in``); ``None`` for a path the LDM UNet has no name for.
    """
    if path in _TOP:
        return _TOP[path]
    parts = path.split(".")
    per_block = layout.layers_per_block + 1
    try:
        if parts[0] == "mid_block":
            inner = {"resnets.0": "0", "attentions.0": "1", "resnets.1": "2"}[".".join(parts[1:3])]
            return "_".join(["middle_block", inner, *_leaf(parts[1], parts[3:])])
        block, kind, layer = int(parts[1]), parts[2], int(parts[3])
        if parts[0] == "down_blocks":
            if kind == "downsamplers":  # the ``op`` conv closes the block
                return f"input_blocks_{(block + 1) * per_block}_0_op"
            index = 1 + block * per_block + layer
            return "_".join(["input_blocks", str(index), _inner(kind), *_leaf(kind, parts[4:])])
        if parts[0] == "up_blocks":
            if kind == "upsamplers":  # after the block's last resnet (and attention)
                index = block * per_block + layout.layers_per_block
                return f"output_blocks_{index}_{2 if layout.up_has_attention[block] else 1}_conv"
            index = block * per_block + layer
            return "_".join(["output_blocks", str(index), _inner(kind), *_leaf(kind, parts[4:])])
    except (IndexError, KeyError, ValueError):
        pass
    return None


def _inner(kind: str) -> str:
    return {"resnets": "0", "attentions": "1"}[kind]


def _leaf(kind: str, rest: list[str]) -> list[str]:
    if kind == "resnets":
        return [_RESNET[".".join(rest)]]
    return rest
