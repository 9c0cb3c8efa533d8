"""Offline test fixtures: tiny random diffusers pipelines and LoRA files built in code.

Nothing here downloads: every component is built from a small config, and the CLIP
tokenizer comes from a vocabulary written by this module (byte-level BPE, a few merges).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from safety_lora.adapters.names import denoiser_part

__all__ = ["TINY_WORDS", "tiny_controlnet", "tiny_lora_file", "tiny_pipeline", "tiny_tokenizer"]

#: Words the tiny tokenizer has BPE merges for; anything else falls back to byte tokens.
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "photo", "painting", "portrait",
    "cat", "dog", "house", "tree", "car", "person", "woman", "man", "child", "sofa", "red",
    "blue", "green", "nude", "naked", "blood", "gore", "weapon", "gun", "knife", "violence",
)  # fmt: skip

_MAX_LENGTH = 77
_HIDDEN = 32
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table used by byte-level BPE."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over bytes plus :data:`TINY_WORDS` (about 560 ids), max length 77."""
    chars = list(_bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars)]
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        # Merge left to right: ("c", "a") -> "ca", ("ca", "t</w>") -> "cat</w>".
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merge = (parts[0], parts[1])
            if merge not in merges:
                merges.append(merge)
                tokens.append(parts[0] + parts[1])
            parts = [parts[0] + parts[1], *parts[2:]]
    vocab: dict[str, int] = {}
    for tok in [*tokens, _BOS, _EOS]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_MAX_LENGTH)


def _text_config(tokenizer: CLIPTokenizer, *, projection_dim: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({} if projection_dim is None else {"projection_dim": projection_dim}),
    )


#: The SD 1.x and SDXL UNets' block structure (SDXL's 10 transformer layers cut to 3).
_REAL_BLOCKS: dict[str, dict[str, object]] = {
    "sd": {
        "layers_per_block": 2,
        "block_out_channels": (16, 16, 32, 32),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "attention_head_dim": 2,
    },
    "sdxl": {
        "layers_per_block": 2,
        "block_out_channels": (16, 32, 32),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 3),
        "attention_head_dim": (2, 4, 4),
    },
}


def _unet(kind: Literal["sd", "sdxl"], *, real_blocks: bool = False) -> UNet2DConditionModel:
    common: dict[str, object] = {
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 1,
        "block_out_channels": (16, 32),
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
        "attention_head_dim": (2, 4),
    }
    if real_blocks:
        common.update(_REAL_BLOCKS[kind])
    if kind == "sd":
        return UNet2DConditionModel(cross_attention_dim=_HIDDEN, **common)  # type: ignore[no-untyped-call]
    return UNet2DConditionModel(  # type: ignore[no-untyped-call]
        cross_attention_dim=2 * _HIDDEN,  # both text encoders' hidden states, concatenated
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + _HIDDEN,  # 6 time ids + pooled text
        use_linear_projection=True,
        **common,
    )


def _vae(latent_channels: int = 4, **extra: Any) -> AutoencoderKL:
    return AutoencoderKL(  # type: ignore[no-untyped-call]
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        **extra,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )


def _scheduler() -> DDIMScheduler:
    # clip_sample=False: the DDIM default (True) wrecks samples of a small latent model.
    return DDIMScheduler(  # type: ignore[no-untyped-call]
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


#: Small SD3 / Flux transformer configs (the block structure of the real ones, few layers).
_TRANSFORMERS: dict[str, dict[str, Any]] = {
    "sd3": {
        "sample_size": 16, "patch_size": 1, "in_channels": 4, "out_channels": 4,
        "num_layers": 2, "attention_head_dim": 8, "num_attention_heads": 4,
        "caption_projection_dim": 32, "joint_attention_dim": _HIDDEN,
        "pooled_projection_dim": 2 * _HIDDEN,
    },
    "flux": {
        "patch_size": 1, "in_channels": 4, "num_layers": 1, "num_single_layers": 1,
        "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": _HIDDEN,
        "pooled_projection_dim": _HIDDEN, "axes_dims_rope": [4, 4, 8],
    },
    "pixart": {
        "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8,
        "num_layers": 2, "cross_attention_dim": 16, "sample_size": 16, "patch_size": 2,
        "caption_channels": _HIDDEN,
    },
}  # fmt: skip
#: A small T5 encoder; no dropout (a model built from a config is in training mode).
_T5: dict[str, Any] = {"d_model": _HIDDEN, "d_kv": 8, "d_ff": 37, "num_layers": 2}
_T5 |= {"num_heads": 4, "dropout_rate": 0.0}


def _transformer_pipeline(kind: Literal["sd3", "flux", "pixart"]) -> Any:
    """SD3 (two CLIP encoders, no T5), Flux (CLIP + a small T5) or PixArt-Sigma (a small T5,
    cross-attention blocks) with a small transformer.
    """
    tokenizer = tiny_tokenizer()
    if kind == "pixart":
        t5 = T5Config(vocab_size=len(tokenizer), decoder_start_token_id=0, pad_token_id=0, **_T5)
        return PixArtSigmaPipeline(
            tokenizer=tokenizer,  # a CLIP tokenizer stands in for T5's (no download)
            text_encoder=T5EncoderModel(t5),
            vae=_vae(),
            transformer=PixArtTransformer2DModel(**_TRANSFORMERS["pixart"]),  # type: ignore[no-untyped-call]
            scheduler=_scheduler(),
        )
    vae: dict[str, Any] = {"shift_factor": 0.0, "scaling_factor": 1.0, "use_quant_conv": False}
    vae["use_post_quant_conv"] = False
    common = {"scheduler": FlowMatchEulerDiscreteScheduler(), "tokenizer": tokenizer}
    if kind == "sd3":
        config = _text_config(tokenizer, projection_dim=_HIDDEN)
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**_TRANSFORMERS["sd3"]),  # type: ignore[no-untyped-call]
            vae=_vae(**vae),
            text_encoder=CLIPTextModelWithProjection(config),
            text_encoder_2=CLIPTextModelWithProjection(config),
            tokenizer_2=tiny_tokenizer(),
            text_encoder_3=None,
            tokenizer_3=None,
            **common,
        )
    t5 = T5Config(vocab_size=len(tokenizer), decoder_start_token_id=0, pad_token_id=0, **_T5)
    return FluxPipeline(
        transformer=FluxTransformer2DModel(**_TRANSFORMERS["flux"]),  # type: ignore[no-untyped-call]
        vae=_vae(latent_channels=1, **vae),
        text_encoder=CLIPTextModel(_text_config(tokenizer)),
        text_encoder_2=T5EncoderModel(t5),
        tokenizer_2=tiny_tokenizer(),  # a CLIP tokenizer stands in for T5's (no download)
        **common,
    )


def tiny_pipeline(
    kind: Literal["sd", "sdxl", "sd3", "flux", "pixart"] = "sd",
    *,
    img2img: bool = False,
    seed: int = 0,
    real_blocks: bool = False,
) -> DiffusionPipeline:
    """A random Stable Diffusion (SDXL, SD3, Flux, PixArt-Sigma) pipeline of a few hundred kB
    making 32x32 images.

    ``real_blocks``: the UNet has the real model's block structure (SD 1.x: 4 blocks; SDXL:
    3 blocks with 1/2/3 transformer layers) at small widths, so module names are the real ones.
    SD3, Flux and PixArt have a transformer denoiser (``pipe.transformer``); Flux and PixArt
    take short ``max_sequence_length`` values fastest (their T5 pads to it), and PixArt needs
    ``use_resolution_binning=False`` (its bins start at 256 px). The weights depend only on
    ``seed``; the global torch RNG is left untouched. ``safety_checker`` is ``None`` (SD) and
    no watermarker is attached (SDXL).
    """
    if kind not in ("sd", "sdxl", "sd3", "flux", "pixart"):
        raise ValueError(f"`kind` must be 'sd', 'sdxl', 'sd3', 'flux' or 'pixart', got {kind!r}")
    if kind == "sd3" or kind == "flux" or kind == "pixart":  # narrows the Literal for mypy
        if img2img or real_blocks:
            raise ValueError(f"`img2img` and `real_blocks` apply to UNet pipelines, not {kind!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            made: DiffusionPipeline = _transformer_pipeline(kind)
        made.default_sample_size = 16  # type: ignore[attr-defined]  # 32x32 images, like the rest
        made.set_progress_bar_config(disable=True)  # type: ignore[no-untyped-call]
        return made
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet(kind, real_blocks=real_blocks)
        vae = _vae()
        tokenizer = tiny_tokenizer()
        text_encoder = CLIPTextModel(_text_config(tokenizer))
        if kind == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(
                _text_config(tokenizer, projection_dim=_HIDDEN)
            )
    pipe: Any
    if kind == "sd":
        cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
        pipe = cls(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        xl_cls = StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline
        pipe = xl_cls(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tiny_tokenizer(),
            unet=unet,
            scheduler=_scheduler(),
            add_watermarker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_controlnet(pipe: Any, *, seed: int = 0) -> Any:
    """A random ControlNet for ``pipe``'s tiny UNet (diffusers' ``ControlNetModel.from_unet``),
    ~120k parameters: ``StableDiffusionControlNetPipeline.from_pipe(pipe, controlnet=...)``."""
    from diffusers import ControlNetModel

    blocks = len(pipe.unet.config.block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ControlNetModel.from_unet(
            pipe.unet, conditioning_embedding_out_channels=(4, 8, 8, 8)[:blocks]
        )


def tiny_lora_file(
    pipe: DiffusionPipeline,
    path: str | Path,
    *,
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    std: float = 0.5,
    targets: Sequence[str] | None = None,
) -> Path:
    """Write a random diffusers/PEFT-format denoiser LoRA for ``pipe`` to ``path`` (safetensors).

    Every linear of the UNet (or transformer) whose name ends with one of ``targets`` (default:
    the cross-attention projections; a transformer's joint attention, text side included)
    gets ``lora_A``/``lora_B`` of rank ``rank`` with entries ~ N(0, std); both are non-zero,
    so the adapter changes outputs. ``alpha`` (default: ``rank``) is stored in the
    ``lora_adapter_metadata`` header that diffusers reads back. ``pipe`` is not modified.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"`path` must end with .safetensors, got {str(path)!r}")
    if rank < 1:
        raise ValueError(f"`rank` must be >= 1, got {rank}")
    gen = torch.Generator().manual_seed(seed)
    layers: dict[str, torch.Tensor] = {}
    names: list[str] = []
    part = denoiser_part(pipe)
    unet: torch.nn.Module = getattr(pipe, part)
    if targets is None:
        targets = ("attn2.to_k", "attn2.to_v", "attn2.to_q", "attn2.to_out.0")
        if part == "transformer":
            targets = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_k_proj", "attn.add_v_proj")
            targets += ("attn2.to_k", "attn2.to_v")  # PixArt's cross-attention
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and any(name.endswith(t) for t in targets):
            names.append(name)
            a = torch.randn(rank, module.in_features, generator=gen) * std
            b = torch.randn(module.out_features, rank, generator=gen) * std
            layers[f"{name}.lora_A.weight"] = a
            layers[f"{name}.lora_B.weight"] = b
    if not names:
        raise ValueError(f"`targets` {list(targets)} match no linear layer of `pipe.{part}`")
    metadata = {"r": rank, "lora_alpha": float(alpha if alpha is not None else rank)}
    metadata["target_modules"] = names  # type: ignore[assignment]
    if not hasattr(type(pipe), "save_lora_weights"):  # PixArt: diffusers has no LoRA writer
        from safety_lora.adapters import AdapterState, ModuleIndex, ModuleWeights, write_adapter

        modules = {
            n: ModuleWeights(
                {
                    "lora_down": layers[f"{n}.lora_A.weight"],
                    "lora_up": layers[f"{n}.lora_B.weight"],
                },
                metadata["lora_alpha"],
            )
            for n in names
        }
        denoiser = ModuleIndex.from_model(unet).denoiser
        write_adapter(AdapterState("lora", modules, denoiser=denoiser), path, to="peft")
        return path
    type(pipe).save_lora_weights(  # type: ignore[attr-defined]
        str(path.parent),
        weight_name=path.name,
        **{
            f"{part}_lora_layers": layers,
            f"{part}_lora_adapter_metadata": json.loads(json.dumps(metadata)),
        },
    )
    return path
