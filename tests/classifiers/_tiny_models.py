"""Tiny random transformers models built in code and saved to a folder (no downloads)."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROJECTION_DIM = 16


def random_images(n: int, *, seed: int = 0, size: tuple[int, int] = (40, 48)) -> list[Image.Image]:
    """``n`` random RGB images (smooth blobs, so they differ after resizing)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))
    return out


def tiny_vit_classifier(
    folder: Path, *, labels: list[str], problem_type: str | None = None, seed: int = 0
) -> Path:
    """A 2-layer ViT image classifier and its processor, saved with ``save_pretrained``."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type=problem_type,
    )
    model = ViTForImageClassification(config).eval()
    with torch.no_grad():  # a visible spread of logits, so the scores differ between images
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def tiny_clip_tokenizer(max_length: int = 16):  # type: ignore[no-untyped-def]
    """A CLIP BPE tokenizer over lower-case letters (no merges), built from a vocab dict."""
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>"]
    tokens += list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_safety_checker_folder(folder: Path, *, seed: int = 0, with_text: bool = True) -> Path:
    """A random ``StableDiffusionSafetyChecker`` with its image processor (and text tower).

    Layout: the checker and ``preprocessor_config.json`` at the root; with ``with_text`` a
    ``text_encoder/`` (CLIPTextModelWithProjection of the same CLIP) and a ``tokenizer/``.
    """
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPTextModelWithProjection

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(seed)
    config = CLIPConfig(
        projection_dim=PROJECTION_DIM,
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "projection_dim": PROJECTION_DIM,
        },
        vision_config={
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "projection_dim": PROJECTION_DIM,
        },
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        checker.concept_embeds.copy_(torch.randn(17, PROJECTION_DIM, generator=gen))
        checker.special_care_embeds.copy_(torch.randn(3, PROJECTION_DIM, generator=gen))
        checker.concept_embeds_weights.fill_(0.9)
        checker.special_care_embeds_weights.fill_(0.9)
    checker.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    if with_text:
        text = CLIPTextModelWithProjection(config.text_config).eval()
        text.save_pretrained(folder / "text_encoder")
        tokenizer.save_pretrained(folder / "tokenizer")
    return folder
