"""Tiny random vision-language guards of each family, built in code and saved to a folder.

Each folder is laid out as the family's real one on the Hub (config.json, safetensors weights,
tokenizer, image processor, processor config, chat template), with a byte-level BPE tokenizer
trained here on the guards' own prompts, so it holds the special tokens each chat format
needs and the answer words are real tokens. No downloads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from safety_lora.classifiers import vlm_guard_llama_guard as llama_guard
from safety_lora.classifiers import vlm_guard_llavaguard as llavaguard
from safety_lora.classifiers.vlm_guard import DEFAULT_TEXTS, FAMILY_CATEGORIES

#: ShieldGemma 2's prompt, as its chat template writes it (one user turn, then the model's).
SHIELDGEMMA2_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}{%- for item in message['content'] -%}"
    "{{ '<start_of_turn>user\\n' }}{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}"
    "{{ 'You are a policy expert trying to help determine whether a generated or real image is"
    " in violation of the safety policy below. Your decision must very clearly follow the"
    " specific language used in the safety policy and should not include any interpretation"
    " outside of the safety policy.\\n\\n<BEGIN_SAFETY_POLICY>\\n' + item['text'] +"
    " '\\n</END_SAFETY_POLICY>\\n\\nDoes the image violate the above policy? Your Answer must"
    " start with \\'Yes\\' or \\'No\\'.<end_of_turn>\\n' }}"
    "{%- endif -%}{%- endfor -%}{{ '<start_of_turn>model\\n' }}{%- endfor -%}"
)
#: LLaVA-OneVision's (Qwen2's) chat template: images first, then the text.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\\n' }}"
    "{% endif %}{% endfor %}{% for item in message['content'] %}{% if item['type'] == 'text' %}"
    "{{ '\\n' + item['text'] }}{% endif %}{% endfor %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def random_images(n: int, *, seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of different sizes (smooth blobs)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        small = rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8)
        size = (24 + 4 * (k % 3), 20 + 6 * (k % 2))
        out.append(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))
    return out


def _corpus() -> list[str]:
    texts = [t for family in DEFAULT_TEXTS.values() for t in family.values()]
    texts += [llavaguard.prompt("", list(FAMILY_CATEGORIES["llavaguard"]))]
    texts += [llama_guard.prompt("", bos="", image="")]
    answers = ['{\n    "rating": "Unsafe",', '{\n    "rating": "Safe",', "unsafe", "safe"]
    return texts + answers * 20 + ["Yes", "No"] * 20


def tokenizer(specials: list[str], *, extra: dict[str, str] | None = None, **named: str) -> Any:
    """A byte-level BPE tokenizer (about 600 tokens) trained on the guards' prompts, with
    ``specials`` and the ``named`` ones (bos_token=...) as special tokens; ``extra`` names
    more (image_token=...) as attributes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    reserved = [*specials, *named.values(), *(extra or {}).values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(dict.fromkeys(reserved)),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        extra_special_tokens=extra or {},
        additional_special_tokens=specials,
        **named,
    )


def _sharpen(model: torch.nn.Module, by: float = 10.0) -> None:
    """Scale every weight matrix (and draw the ones initialised to zero, as Gemma 3's image
    projection), so the tiny model's answers spread over 0..1 and depend visibly on the image
    (at initialisation they are all near 0.5)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0.0, 0.2)
            elif p.ndim >= 2:
                p.mul_(by)


def shieldgemma2_folder(folder: Path, *, seed: int = 0) -> Path:
    """A ShieldGemma 2 (Gemma 3 text, SigLIP vision) of hidden size 16, with its processor."""
    from transformers import ShieldGemma2Config, ShieldGemma2ForImageClassification
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    tok = tokenizer(
        ["<start_of_turn>", "<end_of_turn>"],
        extra={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        },
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    torch.manual_seed(seed)
    config = ShieldGemma2Config(
        text_config={
            "model_type": "gemma3_text",
            "vocab_size": len(tok),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 2048,
            "sliding_window": 64,
            "layer_types": ["full_attention"],
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 16,
            "patch_size": 4,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        mm_tokens_per_image=4,
        boi_token_index=tok.boi_token_id,
        eoi_token_index=tok.eoi_token_id,
        image_token_index=tok.image_token_id,
    )
    config.yes_token_index = tok.convert_tokens_to_ids("Yes")
    config.no_token_index = tok.convert_tokens_to_ids("No")
    model = ShieldGemma2ForImageClassification(config).eval()
    _sharpen(model)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    Gemma3ImageProcessorPil(size={"height": 16, "width": 16}).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(SHIELDGEMMA2_TEMPLATE)
    processor = {"processor_class": "ShieldGemma2Processor", "image_seq_length": 4}
    (folder / "processor_config.json").write_text(json.dumps(processor))
    return folder


def llavaguard_folder(folder: Path, *, seed: int = 0) -> Path:
    """A LLaVA-OneVision (Qwen2 text, SigLIP vision) of hidden size 16, with its processor."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    tok = tokenizer(
        ["<|im_start|>", "<|im_end|>"],
        extra={"image_token": "<image>", "video_token": "<video>"},
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    grid = [[16, 16], [16, 32], [32, 16], [32, 32]]
    torch.manual_seed(seed)
    config = LlavaOnevisionConfig(
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tok),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
        },
        vision_config={
            "model_type": "siglip_vision_model",
            "image_size": 16,
            "patch_size": 8,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
        },
        image_token_index=tok.image_token_id,
        video_token_index=tok.video_token_id,
        image_grid_pinpoints=grid,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    _sharpen(model)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    LlavaOnevisionImageProcessorPil(
        size={"height": 16, "width": 16}, image_grid_pinpoints=grid
    ).save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(LLAVA_TEMPLATE)
    processor = {
        "processor_class": "LlavaOnevisionProcessor",
        "num_image_tokens": 4,
        "vision_feature_select_strategy": "full",
        "vision_aspect_ratio": "anyres_max_9",
    }
    (folder / "processor_config.json").write_text(json.dumps(processor))
    return folder


def llama4_image_processor() -> Any:
    """Llama 4's image processor; without torchvision (which it needs), a stand-in giving one
    16x16 tile per image, registered for Llama 4 folders in this process."""
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        from transformers import Llama4ImageProcessor

        return Llama4ImageProcessor(size={"height": 16, "width": 16}, max_patches=1)
    from transformers import AutoImageProcessor, Llama4Config
    from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

    class TinyLlama4ImageProcessor(BaseImageProcessor):  # type: ignore[misc]
        model_input_names: ClassVar[list[str]] = ["pixel_values"]

        def fetch_images(self, images: Any) -> Any:
            return images

        def preprocess(self, images: Any, return_tensors: Any = None, **_: Any) -> BatchFeature:
            pixels = [
                np.asarray(im.convert("RGB").resize((16, 16)), dtype=np.float32) / 127.5 - 1.0
                for im in images
            ]
            data = {
                "pixel_values": np.stack([p.transpose(2, 0, 1) for p in pixels]),
                "aspect_ratios": np.ones((len(pixels), 2), dtype=np.int64),
            }
            return BatchFeature(data, tensor_type=return_tensors)

    stand_in = {"torchvision": TinyLlama4ImageProcessor, "pil": TinyLlama4ImageProcessor}
    AutoImageProcessor.register(Llama4Config, image_processor_classes=stand_in, exist_ok=True)
    return TinyLlama4ImageProcessor()


def llama_guard_folder(folder: Path, *, seed: int = 0) -> Path:
    """A Llama 4 of hidden size 16 (two dense layers, one with RoPE and one without, as Llama
    Guard 4), with its processor."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4Processor

    specials = [
        "<|header_start|>",
        "<|header_end|>",
        "<|eot|>",
        "<|image_start|>",
        "<|image_end|>",
        "<|image|>",
        "<|patch|>",
        "<|tile_x_separator|>",
        "<|tile_y_separator|>",
    ]
    tok = tokenizer(
        specials,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot|>",
        pad_token="<|finetune_right_pad|>",
    )
    torch.manual_seed(seed)
    config = Llama4Config(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 16,
            "intermediate_size": 32,
            "intermediate_size_mlp": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "moe_layers": [],
            "no_rope_layers": [1, 0],
            "max_position_embeddings": 2048,
            "attention_chunk_size": 2048,
            "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 16,
            "patch_size": 4,
            "vision_output_dim": 16,
            "projector_input_dim": 16,
            "projector_output_dim": 16,
            "pixel_shuffle_ratio": 0.5,
        },
        image_token_index=tok.convert_tokens_to_ids("<|patch|>"),
        boi_token_index=tok.convert_tokens_to_ids("<|image_start|>"),
        eoi_token_index=tok.convert_tokens_to_ids("<|image_end|>"),
    )
    model = Llama4ForConditionalGeneration(config).eval()
    _sharpen(model)
    model.save_pretrained(folder)
    processor = Llama4Processor(
        image_processor=llama4_image_processor(), tokenizer=tok, patch_size=4
    )
    processor.save_pretrained(folder)
    return folder
