"""Attack rounds of the closed-form edit: they change the edit, erase what the attack found,
leave the UNet as it was and are deterministic."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from safety_lora.closed_form import ClosedFormConfig
from safety_lora.closed_form.solve import solve_inputs
from safety_lora.closed_form.states import gather
from safety_lora.models import concept_world
from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.attack.objective import Objective
from safety_lora.workbench.hardening import TOKENS, _Edited, harden

PLAIN = ClosedFormConfig(erase=["red"], templates=["a {} circle", "a {} square"], push=1.0)
HARD = PLAIN.model_copy(update={"attack_rounds": 1, "attack_steps": 4})


@pytest.fixture(scope="module")
def pipe() -> Any:
    pipe = concept_world()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _solved(pipe: Any, config: ClosedFormConfig) -> Any:
    inputs = gather(pipe, config.pairs(), config.preserve)
    return harden(pipe, inputs, solve_inputs(inputs, config), config)


@pytest.fixture(scope="module")
def hardened(pipe: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """The edit solved with attack rounds, once for the module (the rounds are its cost), and
    the UNet's state from before it."""
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    return _solved(pipe, HARD), before


def test_no_rounds_is_the_plain_solve(pipe: Any) -> None:
    inputs = gather(pipe, PLAIN.pairs(), PLAIN.preserve)
    plain = solve_inputs(inputs, PLAIN)
    assert harden(pipe, inputs, plain, PLAIN) is plain


def test_rounds_change_the_edit_deterministically_and_restore_the_unet(
    pipe: Any, hardened: tuple[Any, dict[str, torch.Tensor]]
) -> None:
    first, before = hardened  # ``before``: the UNet before ``first`` was solved
    plain, again = _solved(pipe, PLAIN), _solved(pipe, HARD)
    after = pipe.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.allclose(first.edit, plain.edit)
    assert torch.equal(first.edit, again.edit)


def test_a_prefix_recovers_less_of_the_concept_from_the_hardened_edit(
    pipe: Any, hardened: tuple[Any, dict[str, torch.Tensor]]
) -> None:
    """The attack objective of a fixed token prefix is worse (higher) on the hardened edit."""
    encoder = PromptEncoder(pipe)
    plain, hard = _solved(pipe, PLAIN), hardened[0]
    prefix = encoder.vocabulary[torch.tensor([70, 85, 99])][None]  # fixed random-ish tokens

    def loss(edit: Any) -> float:
        target = _Edited(pipe, edit)
        try:
            objective = Objective.build(
                pipe,
                target,
                encoder,
                "a red circle",
                [1, 2],
                num_inference_steps=6,
                guidance_scale=4.0,
            )
            draws = [objective.draw(torch.Generator().manual_seed(i)) for i in range(4)]
            ids = encoder.ids("a red circle", TOKENS)[None]
            with torch.no_grad():
                states = encoder.states(ids, prefix)
                return sum(float(objective.losses(states, d)[0]) for d in draws)
        finally:
            target.close()

    assert loss(hard) > loss(plain)


def test_sdxl_is_a_clear_error() -> None:
    xl = tiny_pipeline("sdxl")
    config = ClosedFormConfig(erase=["red"], templates=["a {} car"], attack_rounds=1)
    inputs = gather(xl, config.pairs(), config.preserve)
    with pytest.raises(ValueError, match="SDXL"):
        harden(xl, inputs, solve_inputs(inputs, config), config)
