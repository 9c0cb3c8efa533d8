"""Soft-prompt attack: free input embeddings before the prompt, optimised with Adam.

As AdvUnlearn's ``soft_prompt_attack`` (``prefix_k``, ``word_embd``, ``pgd``): ``tokens``
embeddings start as those of random vocabulary tokens and are unconstrained. A soft prompt is
white-box only (no text types it); it bounds what any prompt could recover.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from safety_lora.workbench.attack.objective import Objective

__all__ = ["SoftResult", "soft_prompt"]


@dataclass(frozen=True)
class SoftResult:
    """The attack states, the loss at each step, and the loss on fixed draws before/after."""

    states: torch.Tensor
    free: torch.Tensor
    losses: list[float]
    initial_loss: float
    final_loss: float


def soft_prompt(
    objective: Objective,
    prompt: str,
    *,
    tokens: int,
    steps: int,
    lr: float,
    generator: torch.Generator,
    checks: int = 4,
    start: torch.Tensor | None = None,
) -> SoftResult:
    """``steps`` Adam steps on ``tokens`` free embeddings prefixed to ``prompt``, starting from
    ``start`` (``[1, tokens, embed]``; AdvUnlearn's "latest" init) or random tokens'."""
    encoder = objective.encoder
    ids = encoder.ids(prompt, tokens)[None]
    vocab = encoder.vocabulary
    if start is None:
        start = vocab[torch.randint(2, len(vocab), (tokens,), generator=generator)][None]
    if start.shape != (1, tokens, vocab.shape[1]):
        raise ValueError(f"soft_prompt: `start` has shape {tuple(start.shape)}")
    free = start.detach().clone().requires_grad_(True)
    fixed = [objective.draw(generator) for _ in range(checks)]

    def on_fixed() -> float:
        with torch.no_grad():
            states = encoder.states(ids, free)
            return sum(float(objective.losses(states, d)[0]) for d in fixed) / len(fixed)

    initial = on_fixed()
    optimizer = torch.optim.Adam([free], lr=lr)
    losses = []
    for _ in range(steps):
        loss = objective.losses(encoder.states(ids, free), objective.draw(generator))[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        states = encoder.states(ids, free).detach()
    return SoftResult(
        states=states,
        free=free.detach(),
        losses=losses,
        initial_loss=initial,
        final_loss=on_fixed(),
    )
