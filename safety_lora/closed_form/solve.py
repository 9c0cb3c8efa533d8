"""Closed-form concept erasure (UCE, Gandikota et al. 2024), with an ESD push and RECE rounds.

For every cross-attention key/value weight ``W`` (out x d; a transformer's
``context_embedder``, see :mod:`.states`) the edit is the minimiser of
``lam |W' - W|^2 + sum_i |W' c_i - W t_i|^2 + preserve_weight sum_j |W' p_j - W p_j|^2``::

    W' = (lam W + sum W t_i c_i^T + eta_p sum W p_j p_j^T)
         (lam I + sum c_i c_i^T + eta_p sum p_j p_j^T)^-1

with ``c`` the erase prompts' text states, ``t`` their targets (the aligned anchor states,
or ``a - push (c - a)``) and ``p`` the preserve prompts' states (:mod:`.states`). Every
target is the base weight times a text state, so ``W' = W (I + D)`` with one d x d matrix
``D = (T - C) C^T M^-1`` shared by all layers: the whole solve is one d x d linear system, and
the adapter's delta for a layer is ``W D`` (strength ``s`` gives ``W + s W D``).

RECE rounds (Gong et al., ECCV 2024): after a solve, the embedding that best regenerates each
erase prompt's keys and values under the edited weights is found in closed form,
``c' = (E^T G E + r I)^-1 E^T G c`` with ``E = I + D``, ``G = sum_l W_l^T W_l`` over every
edited layer, and added to the erase set with the concept's own targets; then the edit is
solved again, ``rounds`` times.

Where this differs from the authors' code: UCE's current script keys each prompt by its last
word token only (its first release: the last word token through the padding, aligned from the
end); this solve keys every position, aligned by a token diff. RECE edits the previous
round's weights with only the new embeddings; here each round re-solves from the base
weights with every embedding so far, so the result stays one strength-scalable delta. RECE's
regulariser is absolute; ``rece_reg`` here is relative to ``trace(G) / d``, so one value
suits models of any width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from safety_lora.adapters import AdapterState, Family, ModuleWeights
from safety_lora.adapters.ldm_names import UnetLayout
from safety_lora.adapters.state import Denoiser
from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.closed_form.states import EditInputs, gather

__all__ = ["ClosedFormEdit", "adversarial_embeddings", "edit_matrix", "solve", "solve_inputs"]


@dataclass(frozen=True)
class ClosedFormEdit:
    """A solved edit: ``W' = W (I + edit)`` for every module in ``weights``.

    ``pooled`` is the separate edit of a transformer denoiser's pooled-embedding layer
    (:mod:`.states`). ``adversarial_gaps`` holds, per RECE round, how far the edited model's
    keys and values for the round's adversarial embeddings are from the base model's for the
    concept (relative; 0 would mean the concept fully regenerated).
    """

    config: ClosedFormConfig
    edit: torch.Tensor
    weights: dict[str, torch.Tensor]
    seconds: float
    adversarial_gaps: tuple[float, ...] = ()
    denoiser: Denoiser = "unet"
    layout: UnetLayout | None = None
    pooled: ClosedFormEdit | None = None

    @property
    def modules(self) -> dict[str, torch.Tensor]:
        """Every edited module's base weight, the pooled part's included."""
        return {**self.weights, **(self.pooled.weights if self.pooled else {})}

    def delta(self, path: str) -> torch.Tensor:
        """Module ``path``'s exact weight delta ``W D`` (float64)."""
        if path not in self.weights and self.pooled is not None:
            return self.pooled.delta(path)
        return self.weights[path].to("cpu", torch.float64) @ self.edit

    def to_state(
        self,
        rank: int | None = None,
        *,
        tolerance: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[AdapterState, dict[str, float], float]:
        """The edit as an adapter: exact (``full``, neither argument) or a LoRA per module of
        rank ``rank``, or of the smallest rank within relative error ``tolerance`` (capped at
        ``rank`` when both are given).

        Returns the state, the relative Frobenius error per module and overall (0 when exact).
        """
        exact = rank is None and tolerance is None
        modules: dict[str, ModuleWeights] = {}
        errors: dict[str, float] = {}
        err2 = norm2 = 0.0
        for path in self.modules:
            delta = self.delta(path)
            if exact:
                modules[path] = ModuleWeights({"diff": delta.to(torch.float32).contiguous()})
                errors[path] = 0.0
                continue
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            k = _rank_for(s, rank, tolerance)
            root = s[:k].sqrt()
            up, down = u[:, :k] * root, root[:, None] * vh[:k]
            tail, total = float(s[k:].pow(2).sum()), float(s.pow(2).sum())
            errors[path] = math.sqrt(tail / total) if total > 0 else 0.0
            err2, norm2 = err2 + tail, norm2 + total
            modules[path] = ModuleWeights(
                {
                    "lora_down": down.to(torch.float32).contiguous(),
                    "lora_up": up.to(torch.float32).contiguous(),
                },
                float(k),
            )
        overall = math.sqrt(err2 / norm2) if norm2 > 0 else 0.0
        family: Family = "full" if exact else "lora"
        shapes = {p: tuple(w.shape) for p, w in self.modules.items()}
        state = AdapterState(
            family, modules, dict(metadata or {}), shapes, self.layout, denoiser=self.denoiser
        )
        return state, errors, overall


def _rank_for(s: torch.Tensor, rank: int | None, tolerance: float | None) -> int:
    """The kept rank: ``rank``, or the smallest within ``tolerance`` (at most ``rank``)."""
    limit = int(s.numel()) if rank is None else min(rank, int(s.numel()))
    if tolerance is None:
        return limit
    energy = s.pow(2)
    total = float(energy.sum())
    if total == 0.0:
        return 1
    # tail[k] = energy beyond the first k values; keep the first k with tail[k] <= tol^2 total
    tail = total - torch.cumsum(energy, 0)
    within = torch.nonzero(tail <= (tolerance**2) * total)
    return max(1, min(limit, int(within[0]) + 1 if within.numel() else limit))


def edit_matrix(
    concept: torch.Tensor, target: torch.Tensor, preserve: torch.Tensor, config: ClosedFormConfig
) -> torch.Tensor:
    """``D = (T - C) C^T M^-1`` with ``M = lam I + C C^T + eta_p P P^T`` (M is symmetric)."""
    dim = concept.shape[0]
    m = config.lam * torch.eye(dim, dtype=torch.float64) + concept @ concept.T
    m = m + config.preserve_weight * (preserve @ preserve.T)
    solved: torch.Tensor = torch.linalg.solve(m, concept @ (target - concept).T)
    return solved.T


def solve_inputs(inputs: EditInputs, config: ClosedFormConfig) -> ClosedFormEdit:
    """Solve the edit for gathered ``inputs`` (see the module docstring)."""
    began = time.perf_counter()
    if inputs.pooled is not None and config.rounds:
        raise ValueError(
            "RECE rounds (rounds) find adversarial states for one shared edit; a transformer "
            "denoiser's edit has two (text states, pooled embedding): set rounds: 0"
        )
    concept, anchor = inputs.concept, inputs.anchor
    target = anchor - config.push * (concept - anchor)
    edit = edit_matrix(concept, target, inputs.preserve, config)
    gaps: list[float] = []
    if config.rounds:
        weights = [w.to("cpu", torch.float64) for w in inputs.weights.values()]
        eye = torch.eye(inputs.dim, dtype=torch.float64)
        keys, targets = concept, target
        for _ in range(config.rounds):
            adversarial = adversarial_embeddings(edit, weights, concept, config.rece_reg)
            gaps.append(_gap(weights, eye + edit, adversarial, concept))
            keys = torch.cat([keys, adversarial], dim=1)
            targets = torch.cat([targets, target], dim=1)
            edit = edit_matrix(keys, targets, inputs.preserve, config)
    return ClosedFormEdit(
        config=config,
        edit=edit,
        weights=dict(inputs.weights),
        seconds=time.perf_counter() - began,
        adversarial_gaps=tuple(gaps),
        denoiser=inputs.denoiser,
        layout=inputs.layout,
        pooled=None if inputs.pooled is None else solve_inputs(inputs.pooled, config),
    )


def adversarial_embeddings(
    edit: torch.Tensor, weights: list[torch.Tensor], concept: torch.Tensor, reg: float
) -> torch.Tensor:
    """RECE's closed form: per column of ``concept``, the text state whose keys and values
    under the edited weights ``W (I + edit)`` are closest to the base's for the concept,
    ``(E^T G E + r I)^-1 E^T G c`` with ``r = reg * trace(G) / d`` (float64 ``weights``).
    """
    eye = torch.eye(edit.shape[0], dtype=torch.float64)
    gram = sum((w.T @ w for w in weights), torch.zeros_like(edit))
    e = eye + edit
    r = reg * float(torch.trace(gram)) / edit.shape[0]
    found: torch.Tensor = torch.linalg.solve(e.T @ gram @ e + r * eye, e.T @ gram @ concept)
    return found


def _gap(
    weights: list[torch.Tensor], e: torch.Tensor, adversarial: torch.Tensor, concept: torch.Tensor
) -> float:
    """``sqrt(sum |W E c' - W c|^2 / sum |W c|^2)`` over layers: how well c' regenerates c."""
    num = den = 0.0
    for w in weights:
        base = w @ concept
        num += float((w @ (e @ adversarial) - base).pow(2).sum())
        den += float(base.pow(2).sum())
    return math.sqrt(num / den) if den > 0 else 0.0


def solve(pipe: Any, config: ClosedFormConfig) -> ClosedFormEdit:
    """Gather ``config``'s prompts from ``pipe`` and solve; ``seconds`` covers both."""
    began = time.perf_counter()
    edit = solve_inputs(gather(pipe, config.pairs(), config.preserve), config)
    return replace(edit, seconds=time.perf_counter() - began)
