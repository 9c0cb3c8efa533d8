"""The shipped concept-world pipeline: loads offline, generates, follows colour prompts."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from safety_lora.concept_world.model import build_tokenizer
from safety_lora.concept_world.world import WORDS, WORDS_2
from safety_lora.models import CONCEPT_WORLD_DEFAULTS, CONCEPT_WORLD_DIR, concept_world
from safety_lora.workbench.concept_world.evaluate import accuracy, evaluate


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    return concept_world()


def test_folder_is_a_small_safetensors_pipeline() -> None:
    files = [p for p in CONCEPT_WORLD_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
    assert len([p for p in files if p.suffix == ".safetensors"]) == 3
    scheduler = json.loads((CONCEPT_WORLD_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert scheduler["clip_sample"] is False


def test_loads_offline_with_plain_from_pretrained() -> None:
    pipe = StableDiffusionPipeline.from_pretrained(
        CONCEPT_WORLD_DIR, local_files_only=True, safety_checker=None
    )
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.clip_sample is False
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert image.images[0].size == (32, 32)


def test_every_world_word_is_one_token(pipe: StableDiffusionPipeline) -> None:
    tokenizer = build_tokenizer()
    for word in WORDS:
        assert len(tokenizer(word).input_ids) == 3, word
    assert set(WORDS) < set(WORDS_2)  # the shipped (world-2) model reads world 1's prompts
    for word in WORDS_2:
        assert len(pipe.tokenizer(word).input_ids) == 3, word


def test_world_1_prompts_and_two_object_scenes_are_drawn(pipe: StableDiffusionPipeline) -> None:
    old = evaluate(pipe, ["a small red circle on the left", "a large blue square"], seeds=[0, 1])
    assert accuracy(old, "colour") == 1.0 and accuracy(old, "shape") >= 0.5
    two = evaluate(
        pipe,
        ["a red circle and a blue square", "a yellow triangle and a green circle"],
        seeds=[0, 1],
    )
    assert all(len(g.wanted) == 2 for g in two)
    drawn = [
        seen[0] == spec.colour for g in two for spec, seen in zip(g.wanted, g.seen, strict=True)
    ]
    assert sum(drawn) >= 6  # of 8 asked objects (a colour by chance: 1 in 4)


def test_colour_follows_the_prompt_well_above_chance(pipe: StableDiffusionPipeline) -> None:
    prompts = ["a red square", "a green triangle", "a blue circle", "a yellow square"]
    results = evaluate(pipe, prompts, seeds=[0, 1, 2], num_inference_steps=8)
    assert len(results) == 12
    assert accuracy(results, "colour") >= 0.6


def test_defaults_are_what_the_benchmark_uses() -> None:
    assert set(CONCEPT_WORLD_DEFAULTS) == {"num_inference_steps", "guidance_scale"}
