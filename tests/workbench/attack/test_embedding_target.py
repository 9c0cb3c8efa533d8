"""The text-embedding steering target: the runtime's steering, differentiable, and attacked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from safety_lora.conditioning import unet_eps
from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.workbench.attack import AttackConfig, run_attack
from safety_lora.workbench.attack.targets import EmbeddingTarget


def test_steered_states_are_the_runtimes_and_carry_grad(pipe: Any) -> None:
    target = EmbeddingTarget(pipe, concept="red")
    try:
        prompts = ["a red circle", "a blue square"]
        states = PromptEncoder(pipe).encode(prompts)
        with target.steering():
            runtime = pipe.encode_prompt(prompts, "cpu", 1, False)[0]
        ours = target.steered(states)
        assert torch.allclose(ours, runtime, atol=1e-6)
        assert not torch.allclose(ours[0], states[0])  # red taken out
        assert torch.equal(ours[1], states[1])  # no red: untouched
        free = states.clone().requires_grad_(True)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([500, 500])
        target.eps(x, t, free).sum().backward()
        assert free.grad is not None and free.grad.abs().sum() > 0
        with target.base():
            assert torch.equal(target.eps(x, t, states), unet_eps(pipe, x, t, states))
    finally:
        target.close()
    assert "encode_prompt" not in vars(pipe)


def test_an_attack_run_on_the_embedding_method(pipe: Any, tmp_path: Path) -> None:
    config = AttackConfig(
        erase="red", method="embedding", strength=2.0, attacks=["soft", "concept-vector"],
        budget=2, images=2, num_inference_steps=6, population=4, progress=False, out=tmp_path,
    )  # fmt: skip
    report = run_attack(config, pipe=pipe)
    assert report.target == "text-embedding x2"
    assert [(r.attack, r.attempts, r.images) for r in report.rows] == [
        ("soft", 3, 6),
        ("concept-vector", 3, 6),
    ]
    assert report.rows[0].clean_rate == 0.0  # strength 2 erases red on the plain prompts
    assert report.rows[1].base_asr is not None
    assert (tmp_path / "report.json").is_file()
