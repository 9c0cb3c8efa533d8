"""The offline fixtures: tiny pipelines run, round-trip through a folder, and LoRA files load."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors import safe_open

from safety_lora.testing import TINY_WORDS, tiny_lora_file, tiny_pipeline, tiny_tokenizer


def _run(pipe: DiffusionPipeline, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    out = pipe("a photo of a cat", num_inference_steps=2, generator=gen, output_type="np")
    return np.asarray(out.images)


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_tiny_pipeline_makes_images_deterministically(kind: str) -> None:
    pipe = tiny_pipeline(kind)  # type: ignore[arg-type]
    first = _run(pipe)
    assert first.shape == (1, 32, 32, 3)
    assert first.std() > 0.01  # not a constant image
    np.testing.assert_array_equal(first, _run(tiny_pipeline(kind)))  # type: ignore[arg-type]
    assert not np.array_equal(first, _run(tiny_pipeline(kind, seed=1)))  # type: ignore[arg-type]


def test_tiny_pipeline_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_pipeline()
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_merges_known_words_and_pads_to_77() -> None:
    tok = tiny_tokenizer()
    ids = tok("a photo of a cat").input_ids
    assert len(ids) == 7  # bos + 5 words + eos: every word is one merged token
    assert tok.decode(ids, skip_special_tokens=True) == "a photo of a cat"
    assert "cat</w>" in tok.get_vocab() and len(TINY_WORDS) > 10
    padded = tok("zzz", padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_save_pretrained_round_trip(kind: str, tmp_path: Path) -> None:
    pipe = tiny_pipeline(kind)  # type: ignore[arg-type]
    pipe.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is type(pipe)
    assert loaded.scheduler.config.clip_sample is False
    loaded.set_progress_bar_config(disable=True)
    # SDXL reloads within float noise (~1e-6), not bit-identically.
    np.testing.assert_allclose(_run(loaded), _run(pipe), atol=1e-5)


def test_img2img_variant_shares_components() -> None:
    pipe = tiny_pipeline(img2img=True)
    init = np.full((32, 32, 3), 0.5, dtype=np.float32)
    out = pipe(
        "a cat", image=init, strength=0.5, num_inference_steps=4, output_type="np",
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert out.images.shape == (1, 32, 32, 3)


def test_tiny_lora_file_is_peft_format_with_alpha(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    path = tiny_lora_file(pipe, tmp_path / "a.safetensors", rank=2, alpha=1.0)
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert all(k.startswith("unet.") and ".attn2." in k for k in keys)
    assert any(k.endswith("lora_A.weight") for k in keys)
    assert meta["unet.r"] == 2 and meta["unet.lora_alpha"] == 1.0
    pipe.load_lora_weights(str(path), adapter_name="a")
    layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k
    assert layer.scaling["a"] == pytest.approx(0.5)  # alpha / r read back from the metadata


def test_tiny_lora_file_rejects_bad_arguments(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="safetensors"):
        tiny_lora_file(pipe, tmp_path / "a.bin")
    with pytest.raises(ValueError, match="match no linear"):
        tiny_lora_file(pipe, tmp_path / "a.safetensors", targets=("nope",))
