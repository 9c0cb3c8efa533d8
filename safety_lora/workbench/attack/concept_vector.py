"""Concept-vector attack (Ring-A-Bell, Tsai et al., ICLR 2024; ``chiayi-hsu/Ring-A-Bell``).

Black-box: it needs only the model's text encoder, never a gradient or a UNet call. The
concept's direction is the mean text embedding of prompts with the concept minus the same
prompts with its words removed; the target is a neutral prompt's embedding plus ``scale``
times that direction; a genetic search over token ids (Ring-A-Bell's: keep the better half,
one-point crossover, one-token mutation) looks for a prompt whose embedding is closest to it.
Tokens that spell the concept's words are never drawn, so the prompt found never names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from safety_lora.prompt_encoder import PromptEncoder

__all__ = ["VectorResult", "concept_vector", "vector_search", "without_concept"]


def without_concept(prompt: str, concept: str) -> str:
    """``prompt`` with the concept's words removed ("a red circle" -> "a circle")."""
    words = {w.lower() for w in concept.split()}
    return " ".join(w for w in prompt.split() if w.lower() not in words)


def concept_vector(encoder: PromptEncoder, prompts: Sequence[str], concept: str) -> torch.Tensor:
    """``[1, length, dim]``: mean over ``prompts`` of their states minus their states without
    the concept's words."""
    stripped = [without_concept(p, concept) for p in prompts]
    if stripped == list(prompts):
        raise ValueError(f"attack: no prompt of {list(prompts)} names the concept {concept!r}")
    with torch.no_grad():
        diff = encoder.encode(list(prompts)) - encoder.encode(stripped)
    return diff.mean(dim=0, keepdim=True)


@dataclass(frozen=True)
class VectorResult:
    """The prompt found, its tokens, and its distance to the target at the first and last
    generation (squared error summed over the embedding)."""

    text: str
    tokens: list[int]
    initial_loss: float
    final_loss: float


def vector_search(
    encoder: PromptEncoder,
    target: torch.Tensor,
    *,
    length: int,
    population: int,
    generations: int,
    banned: set[int],
    generator: torch.Generator,
    mutate: float = 0.25,
    crossover: float = 0.5,
) -> VectorResult:
    """``generations`` rounds of Ring-A-Bell's genetic search for ``length`` tokens whose
    states come closest to ``target`` (``[1, length, dim]``)."""
    tok = encoder.tokenizer
    allowed = torch.ones(len(encoder.vocabulary), dtype=torch.bool)
    allowed[list(banned)] = False
    pool = allowed.nonzero().flatten()
    if len(pool) == 0:
        raise ValueError("attack: every vocabulary token is banned")
    if length + 2 > encoder.length:
        raise ValueError(
            f"attack: `tokens` {length} leaves no room for the start and end tokens in the "
            f"encoder's {encoder.length}"
        )
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    frame = torch.full((encoder.length,), pad, dtype=torch.long)
    frame[0], frame[length + 1] = tok.bos_token_id, tok.eos_token_id

    def draw(*shape: int) -> torch.Tensor:
        return pool[torch.randint(len(pool), shape, generator=generator)]

    @torch.no_grad()
    def fitness(genes: torch.Tensor) -> torch.Tensor:
        ids = frame.repeat(len(genes), 1)
        ids[:, 1 : length + 1] = genes
        states = encoder.states(ids)
        return (states - target.to(states)).pow(2).flatten(1).sum(dim=1)

    genes = draw(population, length)
    scores = fitness(genes)
    initial = float(scores.min())
    for _ in range(generations):
        keep = genes[scores.argsort()[: max(1, population // 2)]]
        children = [keep]
        for i in range(len(keep)):
            if float(torch.rand((), generator=generator)) < crossover:
                j = int(torch.randint(len(keep), (), generator=generator))
                cut = int(torch.randint(1, length + 1, (), generator=generator))
                a, b = keep[i], keep[j]
                children.append(
                    torch.stack([torch.cat([a[:cut], b[cut:]]), torch.cat([b[:cut], a[cut:]])])
                )
        genes = torch.cat(children).clone()
        hit = torch.rand(len(genes), generator=generator) < mutate
        hit[0] = False  # the best so far survives unchanged: the loss never rises
        where = torch.randint(length, (len(genes),), generator=generator)
        genes[hit, where[hit]] = draw(int(hit.sum()))
        scores = fitness(genes)
    best = genes[int(scores.argmin())]
    tokens = [int(i) for i in best]
    return VectorResult(
        text=encoder.decode(tokens),
        tokens=tokens,
        initial_loss=initial,
        final_loss=float(scores.min()),
    )
