"""White-box attacks on the concept world: encoding, objective, soft prompt, token search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.attack.discrete import banned_tokens, token_search
from safety_lora.workbench.attack.objective import Objective
from safety_lora.workbench.attack.soft import soft_prompt
from safety_lora.workbench.attack.targets import AdapterTarget, SLDTarget

SAMPLING = {"num_inference_steps": 6, "guidance_scale": 4.0}


def test_states_without_free_tokens_are_the_pipelines(pipe: Any) -> None:
    encoder = PromptEncoder(pipe)
    prompts = ["a red circle", "a large blue square on the left", ""]
    ours = encoder.encode(prompts)
    theirs = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
    assert torch.equal(ours, theirs)


def test_free_tokens_change_only_what_follows_them(pipe: Any) -> None:
    encoder = PromptEncoder(pipe)
    ids = encoder.ids("a red circle", 2)[None]
    assert ids[0, :3].tolist() == [pipe.tokenizer.bos_token_id] * 3
    free = torch.randn(1, 2, encoder.vocabulary.shape[1], requires_grad=True)
    states = encoder.states(ids, free)
    plain = encoder.states(ids)
    assert torch.equal(states[:, 0], plain[:, 0])  # causal: the start token sees nothing new
    assert not torch.allclose(states[:, 3], plain[:, 3])
    states.sum().backward()
    assert free.grad is not None and free.grad.abs().sum() > 0


def test_too_long_prompts_and_sdxl_are_clear_errors(pipe: Any) -> None:
    encoder = PromptEncoder(pipe)
    with pytest.raises(ValueError, match="exceeds the encoder's 16"):
        encoder.ids("a red circle " * 6, 3)
    with pytest.raises(ValueError, match="SDXL"):
        PromptEncoder(tiny_pipeline("sdxl"))


def test_banned_tokens_spell_the_concept_or_are_special(pipe: Any) -> None:
    banned = banned_tokens(pipe.tokenizer, "red")
    names = set(pipe.tokenizer.convert_ids_to_tokens(sorted(banned)))
    assert names == {"red</w>", "<|startoftext|>", "<|endoftext|>"}


def test_soft_prompt_lowers_its_loss_and_is_deterministic(pipe: Any) -> None:
    target = AdapterTarget(pipe, None)
    objective = Objective.build(
        pipe, target, PromptEncoder(pipe), "a red circle", [1, 2], **SAMPLING, batch=2
    )

    def attack() -> Any:
        return soft_prompt(
            objective,
            "a red circle",
            tokens=2,
            steps=12,
            lr=0.01,
            generator=torch.Generator().manual_seed(3),
        )

    first, second = attack(), attack()
    assert first.final_loss < 0.8 * first.initial_loss
    assert first.losses == second.losses and torch.equal(first.states, second.states)
    assert first.states.shape == (1, 16, 64) and first.free.shape == (1, 2, 64)


def _erased(pipe: Any, out: Path) -> Path:
    from safety_lora.closed_form import ClosedFormConfig, erase

    config = ClosedFormConfig(erase=["red"], templates=["a {} circle", "a {} square"], push=1.0)
    return erase(config, out=out, pipe=pipe).path


def test_token_search_never_proposes_banned_tokens_and_improves(pipe: Any, tmp_path: Path) -> None:
    target = AdapterTarget(pipe, _erased(pipe, tmp_path / "e.safetensors"))
    try:
        objective = Objective.build(
            pipe, target, PromptEncoder(pipe), "a red circle", [1, 2], **SAMPLING, batch=2
        )
        banned = banned_tokens(pipe.tokenizer, "red") | set(range(2, 60))
        result = token_search(
            objective,
            "a red circle",
            tokens=2,
            steps=6,
            candidates=8,
            banned=banned,
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        target.close()
    assert len(result.tokens) == 2 and not set(result.tokens) & banned
    assert result.text.endswith(" a red circle") and len(result.losses) == 6
    assert result.final_loss < result.initial_loss


def test_sld_target_is_the_unet_at_strength_zero_and_steers_otherwise(pipe: Any) -> None:
    encoder = PromptEncoder(pipe)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 100])
    states = encoder.encode(["a red circle"]).expand(2, -1, -1)
    plain = AdapterTarget(pipe, None).eps(x, t, states)
    off = SLDTarget(pipe, concept="red", preset="max", strength=0.0, num_inference_steps=6)
    on = SLDTarget(pipe, concept="red", preset="max", strength=1.0, num_inference_steps=6)
    try:
        assert torch.equal(off.eps(x, t, states), plain)
        assert not torch.allclose(on.eps(x, t, states), plain)
    finally:
        off.close()
        on.close()


def test_adapter_target_switches_its_adapter_off_for_the_base(pipe: Any, tmp_path: Path) -> None:
    path = _erased(pipe, tmp_path / "e.safetensors")
    encoder = PromptEncoder(pipe)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    t, states = torch.tensor([500]), encoder.encode(["a red circle"])
    base = AdapterTarget(pipe, None).eps(x, t, states)
    target = AdapterTarget(pipe, path)
    try:
        assert not torch.allclose(target.eps(x, t, states), base)
        with target.base():
            assert torch.allclose(target.eps(x, t, states), base)
    finally:
        target.close()
    assert not getattr(pipe.unet, "peft_config", None)
