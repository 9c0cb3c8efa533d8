"""Attack rounds for the closed-form edit: erase what the red-team harness brings back.

RECE's rounds (``rounds``) find the text *state* that regenerates the concept under the
edited weights and erase it; prompt attacks search the encoder's *input*, and against them
RECE does not help on the concept world (``benchmarks/attack.py``). Each attack round here
applies the current edit to the UNet, runs the harness's soft-prompt attack
(:func:`safety_lora.workbench.attack.soft.soft_prompt`, warm-started from the previous round's) on
every erase prompt, and adds the attacked prompt's states to the erase set with the ESD-push
target of its anchor prompt under the *same* soft prefix (``"<adv> a red circle"`` ->
``"<adv> a circle"``, token-aligned); then it re-solves from the base weights, so the result
stays one strength-scalable delta. SD-style pipelines (one text encoder) only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch

from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.closed_form.solve import ClosedFormEdit, edit_matrix
from safety_lora.closed_form.states import EditInputs, align
from safety_lora.concept_world.model import SAMPLING_DEFAULTS
from safety_lora.conditioning import unet_eps
from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.seeds import hashed_seed
from safety_lora.workbench.attack.objective import Objective
from safety_lora.workbench.attack.soft import soft_prompt

__all__ = ["harden"]

#: Soft-prompt shape and step size of the attack rounds (the harness's defaults).
TOKENS, LR, REFERENCES = 3, 0.01, 4


class _Edited:
    """The UNet with ``W (I + D)`` written into its key/value weights (``base()``: restored)."""

    name = "closed-form (hardening)"

    def __init__(self, pipe: Any, edit: ClosedFormEdit) -> None:
        self.pipe = pipe
        self.layers = {p: pipe.unet.get_submodule(p) for p in edit.weights}
        self.base_weights = {p: layer.weight.detach().clone() for p, layer in self.layers.items()}
        self.edited = {
            p: (
                edit.weights[p].to("cpu", torch.float64)
                @ (torch.eye(edit.edit.shape[0], dtype=torch.float64) + edit.edit)
            ).to(w)
            for p, w in self.base_weights.items()
        }
        self._write(self.edited)

    def _write(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for p, layer in self.layers.items():
                layer.weight.copy_(weights[p])

    def eps(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return unet_eps(self.pipe, x, t, states)

    @contextmanager
    def base(self) -> Iterator[None]:
        self._write(self.base_weights)
        try:
            yield
        finally:
            self._write(self.edited)

    def steering(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def close(self) -> None:
        self._write(self.base_weights)


def _unpadded(ids: torch.Tensor, eos: int) -> list[int]:
    """Token ids up to and including the first end token after the start."""
    values = ids.tolist()
    return values[: values.index(eos, 1) + 1]


def harden(
    pipe: Any, inputs: EditInputs, edit: ClosedFormEdit, config: ClosedFormConfig
) -> ClosedFormEdit:
    """``edit`` after ``config.attack_rounds`` attack rounds (unchanged when there are none)."""
    if not config.attack_rounds:
        return edit
    if inputs.denoiser != "unet":
        raise ValueError(
            "closed-form attack rounds (attack_rounds) run the red-team harness, which needs a "
            "UNet pipeline (SD); set attack_rounds: 0 for SD3/Flux"
        )

    encoder = PromptEncoder(pipe)
    eos = int(encoder.tokenizer.eos_token_id)
    keys = [inputs.concept]
    targets = [inputs.anchor - config.push * (inputs.concept - inputs.anchor)]
    free: dict[str, torch.Tensor] = {}
    # The images to recover are rendered cheaply (the embedded model's 12 steps, CFG 4): they
    # only set the attack's target.
    steps = int(SAMPLING_DEFAULTS["num_inference_steps"])
    cfg = float(SAMPLING_DEFAULTS["guidance_scale"])
    for round_ in range(config.attack_rounds):
        target = _Edited(pipe, edit)
        try:
            for erase_prompt, anchor_prompt in config.pairs():
                refs = [
                    hashed_seed("safety-lora-harden", erase_prompt, i) for i in range(REFERENCES)
                ]
                objective = Objective.build(
                    pipe,
                    target,
                    encoder,
                    erase_prompt,
                    refs,
                    num_inference_steps=steps,
                    guidance_scale=cfg,
                )
                gen = torch.Generator().manual_seed(
                    hashed_seed("safety-lora-harden", erase_prompt, round_)
                )
                found = soft_prompt(
                    objective,
                    erase_prompt,
                    tokens=TOKENS,
                    steps=config.attack_steps,
                    lr=LR,
                    generator=gen,
                    checks=1,
                    start=free.get(erase_prompt),
                )
                free[erase_prompt] = found.free
                ids_c, ids_a = encoder.ids(erase_prompt, TOKENS), encoder.ids(anchor_prompt, TOKENS)
                with torch.no_grad():
                    c = encoder.states(ids_c[None], found.free)[0].to("cpu", torch.float64)
                    a = encoder.states(ids_a[None], found.free)[0].to("cpu", torch.float64)
                a = a[align(_unpadded(ids_c, eos), _unpadded(ids_a, eos), len(c))]
                keys.append(c.T)
                targets.append((a - config.push * (c - a)).T)
        finally:
            target.close()
        matrix = edit_matrix(
            torch.cat(keys, dim=1), torch.cat(targets, dim=1), inputs.preserve, config
        )
        edit = replace(edit, edit=matrix)
    return edit
