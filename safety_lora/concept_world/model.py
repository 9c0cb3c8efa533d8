"""The concept-world model's components: tokenizer, text encoder, VAE, UNet and scheduler.

Everything is built in code from small configs (nothing is downloaded); the tokenizer is a
CLIP BPE tokenizer over the world's own vocabulary, so the saved folder is a normal
``StableDiffusionPipeline`` that loads offline.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING

from safety_lora.concept_world.world import IMAGE_SIZE, WORDS

if TYPE_CHECKING:
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

#: Text positions: the longest caption is 9 tokens with start/end in world 1, 15 in world 2.
MAX_TOKENS = 16
TEXT_DIM = 64
LATENT_CHANNELS = 4
LATENT_SIZE = IMAGE_SIZE // 2
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: The sampling settings the shipped weights are measured at (DDIM steps, CFG scale).
SAMPLING_DEFAULTS: dict[str, float | int] = {"num_inference_steps": 12, "guidance_scale": 4.0}


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to a word's symbols, as the tokenizer does."""
    while len(symbols) > 1:
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(itertools.pairwise(symbols))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2 :]]
    return symbols


def tokenizer_vocab(
    words: Sequence[str] = WORDS,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """BPE vocabulary and merges: every letter (so any text tokenizes) plus each of ``words``.

    Merges are appended word by word, each completing its word given the earlier ones, so
    later merges never split an earlier word: every world word is one token.
    """
    tokens = [BOS, EOS, *string.ascii_lowercase, *(c + "</w>" for c in string.ascii_lowercase)]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = _bpe([*word[:-1], word[-1] + "</w>"], ranks)
        while len(symbols) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            tokens.append(symbols[0] + symbols[1])
            symbols = _bpe(symbols, ranks)
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}, list(ranks)


def build_tokenizer(words: Sequence[str] = WORDS) -> CLIPTokenizer:
    """The world's CLIP tokenizer (each of ``words``, world 1's by default, is one token)."""
    from transformers import CLIPTokenizer

    vocab, merges = tokenizer_vocab(words)
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=MAX_TOKENS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )


def build_text_encoder(*, vocab_size: int) -> CLIPTextModel:
    """A two-layer CLIP text transformer of width 64."""
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab, _ = tokenizer_vocab()
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=2 * TEXT_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    """A 2x-downsampling KL autoencoder: 32x32x3 images <-> 16x16x4 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        mid_block_add_attention=False,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def build_unet(world: int = 1) -> UNet2DConditionModel:
    """A two-level UNet: convolutions at 16x16, cross-attention at 8x8 (down, mid, up).

    World 2 (two objects bound to their words, styles, synonyms) gets two layers per block.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1 if world == 1 else 2,
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_scheduler() -> DDIMScheduler:
    """DDIM over SD's noise schedule, saved with ``clip_sample=False`` (right as saved).

    DDIM rather than DPM-Solver: the multistep solvers raise a numpy DeprecationWarning on
    every ``set_timesteps`` with the installed numpy/torch, which fails warning-strict tests.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def assemble(
    *,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
) -> StableDiffusionPipeline:
    """A ``StableDiffusionPipeline`` of these components, without safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
