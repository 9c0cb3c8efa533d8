"""Adversarial ESD rounds (AdvUnlearn-style): when they start, what they add, resume, SDXL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.training import (
    AdversarialTraining,
    TrainConfig,
    TrainResult,
    train_adapter,
)
from safety_lora.workbench.training.esd import EsdTrainer

Factory = Callable[..., TrainConfig]
ROUNDS = AdversarialTraining(warmup=2, every=2, attack_steps=2, tokens=2)
#: The run with rounds both tests of rounds use (the checkpoint at step 3 changes no loss).
WITH_ROUNDS: dict[str, Any] = {"eval_every": None, "checkpoint_every": 3, "adversarial": ROUNDS}


@pytest.fixture(scope="module")
def with_rounds(module_config_factory: Factory) -> TrainResult:
    """6 steps with rounds from step 2 on, trained once for the module."""
    return train_adapter(module_config_factory("whole", **WITH_ROUNDS), pipe=tiny_pipeline())


def test_rounds_start_at_warmup_and_change_training_from_there(
    config_factory: Factory, with_rounds: TrainResult
) -> None:
    plain = train_adapter(config_factory("plain", eval_every=None), pipe=tiny_pipeline())
    hard = with_rounds
    assert hard.losses[:2] == pytest.approx(plain.losses[:2], rel=1e-6)
    # From the warm-up on, each step adds the loss under the latest soft prompts (>= 0).
    assert all(h > p for h, p in zip(hard.losses[2:], plain.losses[2:], strict=True))
    info = hard.metadata["safety_lora.training_args"]
    assert '"adversarial": {"every": 2' in info


def test_soft_prompts_are_attacks_on_the_adapter(config_factory: Factory) -> None:
    trainer = EsdTrainer(tiny_pipeline(), config_factory(adversarial=ROUNDS))
    try:
        for _ in range(4):
            trainer.train_step()
        adversary = trainer.adversary
        assert adversary is not None and adversary.prompts()
        prompt = adversary.prompts()[0]
        assert adversary.free[prompt].shape == (1, 2, trainer.pipe.text_encoder.config.hidden_size)
        states = adversary.states[prompt]
        plain = adversary.encoder.encode([prompt])
        assert states.shape == plain.shape and not torch.allclose(states, plain)
    finally:
        trainer.close()


def test_resume_continues_exactly_with_rounds(
    config_factory: Factory, with_rounds: TrainResult
) -> None:
    train_adapter(config_factory("parts", steps=3, **WITH_ROUNDS), pipe=tiny_pipeline())
    resumed = train_adapter(
        config_factory("parts", steps=6, resume=True, **WITH_ROUNDS), pipe=tiny_pipeline()
    )
    assert resumed.losses == pytest.approx(with_rounds.losses, rel=1e-5)


def test_sdxl_is_a_clear_error(config_factory: Factory) -> None:
    with pytest.raises(ValueError, match="SDXL"):
        EsdTrainer(tiny_pipeline("sdxl"), config_factory(adversarial=ROUNDS))
