"""Discrete attack: greedy coordinate search over the model's vocabulary for prefix tokens.

UnlearnDiffAtk optimises a relaxed one-hot over the vocabulary and rounds it at the end; we
take the coordinate form of the same gradient (as GCG and Ring-A-Bell's discrete search do):
each step differentiates the objective on a fresh draw through the prefix's one-hot,
proposes the ``candidates`` tokens of one position (cycling) whose gradient promises most,
and keeps the best of them and the current prefix on a fixed selection set of ``checks``
draws (so the selection loss never rises; one draw alone is too noisy to choose by). The
result is text a user can type; it is judged as typed (re-tokenised), so a prefix BPE would
merge differently gets no credit.
Tokens that spell a word of the erased concept and special tokens are never proposed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from safety_lora.workbench.attack.objective import Objective

__all__ = ["TokenResult", "banned_tokens", "token_search"]


@dataclass(frozen=True)
class TokenResult:
    """The prompt found (prefix + original), its prefix tokens, and the selection loss of the
    first prefix, after each step, and at the end."""

    text: str
    tokens: list[int]
    losses: list[float]
    initial_loss: float
    final_loss: float


def banned_tokens(tokenizer: object, concept: str) -> set[int]:
    """Special tokens, and every token whose text is one of the concept's words."""
    words = {w.lower() for w in concept.split()}
    vocab: dict[str, int] = tokenizer.get_vocab()  # type: ignore[attr-defined]
    special = set(getattr(tokenizer, "all_special_ids", []))
    spelled = {i for tok, i in vocab.items() if tok.replace("</w>", "").lower() in words}
    return special | spelled


def token_search(
    objective: Objective,
    prompt: str,
    *,
    tokens: int,
    steps: int,
    candidates: int,
    banned: Sequence[int] | set[int],
    generator: torch.Generator,
    checks: int = 4,
) -> TokenResult:
    """``steps`` greedy coordinate steps on ``tokens`` prefix tokens before ``prompt``."""
    encoder = objective.encoder
    ids = encoder.ids(prompt, tokens)[None]
    vocab = encoder.vocabulary
    allowed = torch.ones(len(vocab), dtype=torch.bool)
    allowed[list(banned)] = False
    pool = allowed.nonzero().flatten()
    if len(pool) == 0:
        raise ValueError("attack: every vocabulary token is banned")
    prefix = pool[torch.randint(len(pool), (tokens,), generator=generator)]
    fixed = [objective.draw(generator) for _ in range(checks)]

    @torch.no_grad()
    def selection(prefixes: torch.Tensor) -> torch.Tensor:
        """Mean loss of each row of ``prefixes`` on the fixed draws."""
        states = encoder.states(ids.expand(len(prefixes), -1), vocab[prefixes])
        return torch.stack([objective.losses(states, d) for d in fixed]).mean(dim=0)

    initial = float(selection(prefix[None])[0])
    losses = []
    for step in range(steps):
        draw = objective.draw(generator)
        onehot = torch.nn.functional.one_hot(prefix, len(vocab)).to(vocab).requires_grad_(True)
        loss = objective.losses(encoder.states(ids, (onehot @ vocab)[None]), draw)[0]
        loss.backward()  # type: ignore[no-untyped-call]
        assert onehot.grad is not None
        position = step % tokens
        score = -onehot.grad[position].masked_fill(~allowed, float("inf"))
        top = score.topk(min(candidates, len(pool))).indices
        trial = prefix.repeat(len(top) + 1, 1)
        trial[1:, position] = top
        with torch.no_grad():
            tried = objective.losses(encoder.states(ids.expand(len(trial), -1), vocab[trial]), draw)
        best = int(tried.argmin())
        prefix = trial[best]
        losses.append(float(tried[best]))
    prefix_list = [int(i) for i in prefix]
    return TokenResult(
        text=f"{encoder.decode(prefix_list)} {prompt}".strip(),
        tokens=prefix_list,
        losses=losses,
        initial_loss=initial,
        final_loss=losses[-1] if losses else initial,
    )
