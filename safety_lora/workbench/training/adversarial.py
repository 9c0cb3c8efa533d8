"""Adversarial rounds for ESD training, after AdvUnlearn (Zhang et al., 2024;
``OPTML-Group/AdvUnlearn``): attack the adapter being trained, then train on the attack.

Every ``every`` steps (from ``warmup`` on) one concept prompt of the batch gets a fresh soft
prompt: :func:`safety_lora.workbench.attack.soft.soft_prompt` for ``attack_steps`` steps,
warm-started from that prompt's previous one (AdvUnlearn's ``attack_init="latest"``), aimed at
the base model's denoising of the concept. Each training step then adds, for every concept row whose
prompt has a soft prompt, the ESD loss of the adapted UNet under the soft prompt's states,
toward the row's own ESD target. Where ours differs: AdvUnlearn trains the text encoder and
regularises it with a retain set; we train the UNet adapter, whose retain prompts already
enter every step, and attack with the same objective our red-team harness measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.seeds import hashed_seed
from safety_lora.workbench.attack.objective import Objective
from safety_lora.workbench.attack.soft import soft_prompt
from safety_lora.workbench.training.config import AdversarialTraining

if TYPE_CHECKING:
    from safety_lora.workbench.training.esd import EsdTrainer

__all__ = ["Adversary"]


class _Training:
    """The adapter being trained as an attack target (``base()``: adapter off)."""

    name = "training"

    def __init__(self, trainer: EsdTrainer) -> None:
        self.trainer = trainer

    def eps(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        return self.trainer.eps_states(x, t, states)

    def base(self) -> AbstractContextManager[None]:
        return self.trainer.base()

    def steering(self) -> AbstractContextManager[Any]:
        return nullcontext()

    def close(self) -> None:
        return None


class Adversary:
    """The soft prompts of one run, by concept prompt, and their loss term."""

    def __init__(self, trainer: EsdTrainer, config: AdversarialTraining) -> None:
        self.trainer, self.config = trainer, config
        self.encoder = PromptEncoder(trainer.pipe)
        self.target = _Training(trainer)
        self.objectives: dict[str, Objective] = {}
        #: Soft prompt (free embeddings, ``[1, tokens, embed]``) and its states, by prompt.
        self.free: dict[str, torch.Tensor] = {}
        self.states: dict[str, torch.Tensor] = {}

    def _objective(self, prompt: str) -> Objective:
        if prompt not in self.objectives:
            self.objectives[prompt] = Objective.build(
                self.trainer.pipe,
                self.target,
                self.encoder,
                prompt,
                seeds=[_seed(prompt, i) for i in range(4)],
                num_inference_steps=self.trainer.config.ddim_steps,
                guidance_scale=self.trainer.config.guidance_scale,
            )
        return self.objectives[prompt]

    def attack(self, prompt: str, generator: torch.Generator) -> None:
        """A new soft prompt for ``prompt`` against the adapter as it is now."""
        result = soft_prompt(
            self._objective(prompt),
            prompt,
            tokens=self.config.tokens,
            steps=self.config.attack_steps,
            lr=self.config.lr,
            generator=generator,
            checks=1,
            start=self.free.get(prompt),
        )
        self.free[prompt], self.states[prompt] = result.free, result.states

    def loss(
        self,
        step: int,
        prompts: Sequence[str],
        x: torch.Tensor,
        t: torch.Tensor,
        want: torch.Tensor,
        generator: torch.Generator,
    ) -> torch.Tensor | None:
        """The adversarial term for concept rows ``prompts`` (``x``, their ESD ``want``)."""
        cfg = self.config
        if step < cfg.warmup:
            return None
        if (step - cfg.warmup) % cfg.every == 0:
            self.attack(prompts[0], generator)
        rows = [i for i, p in enumerate(prompts) if p in self.states]
        if not rows:
            return None
        hidden = torch.cat([self.states[prompts[i]] for i in rows])
        pred = self.trainer.eps_states(x[rows], t, hidden)
        return cfg.weight * (pred - want[rows]).pow(2).mean()

    def tensors(self) -> dict[str, torch.Tensor]:
        """The soft prompts, for a checkpoint (keys ``adv.<n>``; prompts in :meth:`prompts`)."""
        return {f"adv.{i}": self.free[p] for i, p in enumerate(self.free)}

    def prompts(self) -> list[str]:
        return list(self.free)

    def restore(self, prompts: Sequence[str], tensors: dict[str, torch.Tensor]) -> None:
        """Reload :meth:`tensors` (their states are recomputed from the text encoder)."""
        for i, prompt in enumerate(prompts):
            free = tensors[f"adv.{i}"]
            ids = self.encoder.ids(prompt, free.shape[1])[None]
            with torch.no_grad():
                self.free[prompt], self.states[prompt] = free, self.encoder.states(ids, free)


def _seed(prompt: str, index: int) -> int:
    """A stable seed per (prompt, index): the base images an objective recovers."""
    return hashed_seed("safety-lora-adv", prompt, index)
