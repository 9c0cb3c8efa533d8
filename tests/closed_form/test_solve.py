"""The closed-form solve: the paper's formula exactly, its factorisation, alignment, RECE."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.closed_form import ClosedFormConfig
from safety_lora.closed_form.solve import adversarial_embeddings, solve, solve_inputs
from safety_lora.closed_form.states import align, cross_attention_weights, encode, gather
from safety_lora.models import concept_world
from safety_lora.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipe() -> Any:
    return tiny_pipeline()


def _numpy_solve(
    w: np.ndarray, c: np.ndarray, t: np.ndarray, p: np.ndarray, lam: float, eta_p: float
) -> np.ndarray:
    """The issue's formula, column by column, with numpy: (lam W + sum W t c^T + ...)(...)^-1."""
    d = w.shape[1]
    mat1 = lam * w
    mat2 = lam * np.eye(d)
    for i in range(c.shape[1]):
        mat1 = mat1 + np.outer(w @ t[:, i], c[:, i])
        mat2 = mat2 + np.outer(c[:, i], c[:, i])
    for j in range(p.shape[1]):
        mat1 = mat1 + eta_p * np.outer(w @ p[:, j], p[:, j])
        mat2 = mat2 + eta_p * np.outer(p[:, j], p[:, j])
    return mat1 @ np.linalg.inv(mat2)


@pytest.mark.parametrize("push", [0.0, 1.0])
def test_edit_equals_a_direct_numpy_solve_of_every_layer(pipe: Any, push: float) -> None:
    config = ClosedFormConfig(
        erase=["nude", "blood"],
        templates=["a {} person", "a photo of {}"],
        push=push,
        preserve=["a person", "a dog"],
        preserve_weight=0.7,
        lam=0.3,
    )
    inputs = gather(pipe, config.pairs(), config.preserve)
    edit = solve_inputs(inputs, config)
    c, a, p = (x.numpy() for x in (inputs.concept, inputs.anchor, inputs.preserve))
    t = a - push * (c - a)
    assert set(edit.weights) == set(cross_attention_weights(pipe.unet, inputs.dim))
    assert len(edit.weights) == 8  # to_k and to_v of the 4 cross-attention blocks
    for path, weight in edit.weights.items():
        w = weight.double().numpy()
        expected = _numpy_solve(w, c, t, p, config.lam, config.preserve_weight)
        np.testing.assert_allclose(w + edit.delta(path).numpy(), expected, rtol=1e-7, atol=1e-9)


def test_gathered_states_are_the_pipelines_own_and_aligned(pipe: Any) -> None:
    config = ClosedFormConfig(erase=["nude"], templates=["a {} person"], preserve=["a dog"])
    inputs = gather(pipe, config.pairs(), config.preserve)
    states, pooled = encode(pipe, ["a nude person", "a person", "a dog"])
    assert pooled is None and inputs.pooled is None  # a UNet reads no pooled embedding
    length = states.shape[1]
    torch.testing.assert_close(inputs.concept, states[0].T)
    ids = [pipe.tokenizer(q).input_ids for q in ("a nude person", "a person")]
    where = align(ids[0], ids[1], length)
    torch.testing.assert_close(inputs.anchor, states[1][where].T)
    torch.testing.assert_close(inputs.preserve, states[2].T)


def test_alignment_maps_an_inserted_concept_to_the_token_before_it() -> None:
    cw = concept_world()
    concept = cw.tokenizer("a red circle").input_ids
    anchor = cw.tokenizer("a circle").input_ids
    assert len(concept) == 5 and len(anchor) == 4  # <bos> a red circle <eos>
    where = align(concept, anchor, 16)
    # <bos> a -> themselves, red -> "a", circle -> circle, <eos> -> <eos>, padding shifted
    assert where == [0, 1, 1, 2, 3, *range(4, 15)]
    # a replaced run aligns from its end (UCE's last-token alignment); a shorter concept
    # prompt maps its padding past the anchor's end onto the last position
    assert align([0, 5, 6, 7, 1], [0, 8, 7, 1], 6) == [0, 1, 1, 2, 3, 4]
    assert align([0, 7, 1], [0, 5, 6, 7, 1], 5) == [0, 3, 4, 4, 4]


def test_identical_anchor_is_no_edit_and_preserve_only_keeps_weights(pipe: Any) -> None:
    same = ClosedFormConfig(erase=["dog"], guide="dog", preserve=["a cat"])
    assert float(solve(pipe, same).edit.abs().max()) < 1e-12


def test_the_edit_moves_the_concepts_values_to_the_anchor_or_past_it(pipe: Any) -> None:
    # 77 positions but 32-wide states: the targets cannot all be met, the fit is least squares
    base = dict(erase=["nude"], templates=["a {} person"], lam=0.01)
    inputs = gather(pipe, ClosedFormConfig(**base).pairs(), [])
    for push in (0.0, 1.0):
        edit = solve_inputs(inputs, ClosedFormConfig(**base, push=push))
        c, a = inputs.concept, inputs.anchor
        target = a - push * (c - a)
        for path, weight in edit.weights.items():
            w = weight.double()
            before = (w @ c - w @ target).norm()
            after = (w @ c + edit.delta(path) @ c - w @ target).norm()
            assert after < 0.5 * before


def test_rece_rounds_close_the_hole_their_embedding_found(pipe: Any) -> None:
    config = ClosedFormConfig(erase=["nude"], templates=["a {} person"], push=1.0)
    inputs = gather(pipe, config.pairs(), [])
    plain = solve_inputs(inputs, config)
    hardened = solve_inputs(inputs, config.model_copy(update={"rounds": 1}))
    assert len(hardened.adversarial_gaps) == 1 and 0 < hardened.adversarial_gaps[0] < 1
    weights = [w.double() for w in inputs.weights.values()]
    found = adversarial_embeddings(plain.edit, weights, inputs.concept, config.rece_reg)

    def regenerates(edit: torch.Tensor) -> float:  # how close c' gets to the concept's values
        e = torch.eye(inputs.dim, dtype=torch.float64) + edit
        return sum(float((w @ e @ found - w @ inputs.concept).norm()) for w in weights)

    assert regenerates(hardened.edit) > 1.5 * regenerates(plain.edit)


def test_lora_at_full_rank_equals_the_exact_delta(pipe: Any) -> None:
    edit = solve(pipe, ClosedFormConfig(erase=["nude", "gore"], push=1.0))
    full, _, overall = edit.to_state(None)
    lora, _, lora_overall = edit.to_state(rank=4096)
    assert full.family == "full" and lora.family == "lora"
    assert overall == 0.0 and lora_overall < 1e-6
    for path in edit.weights:
        torch.testing.assert_close(lora.delta(path), full.delta(path), atol=1e-5, rtol=1e-5)
    small, small_errors, small_overall = edit.to_state(rank=1)
    assert 0 < small_overall < 1 and all(0 <= e < 1 for e in small_errors.values())
    assert all(small.rank(p) == 1 for p in small.modules)


def test_a_tolerance_keeps_the_smallest_rank_within_it(pipe: Any) -> None:
    edit = solve(pipe, ClosedFormConfig(erase=["nude", "gore"], push=1.0))
    loose, loose_errors, loose_overall = edit.to_state(tolerance=0.2)
    tight, tight_errors, tight_overall = edit.to_state(tolerance=0.01)
    assert max(loose_errors.values()) <= 0.2 and max(tight_errors.values()) <= 0.01
    assert loose_overall <= 0.2 and tight_overall <= 0.01
    for path in edit.weights:
        k = loose.rank(path)
        assert k is not None and k <= (tight.rank(path) or 0)
        if k > 1:  # one rank less would break the tolerance: k is the smallest
            _, errors, _ = edit.to_state(rank=k - 1)
            assert errors[path] > 0.2
    capped, capped_errors, _ = edit.to_state(rank=2, tolerance=0.01)
    assert all(capped.rank(p) == 2 for p in capped.modules)
    assert max(capped_errors.values()) > 0.01  # the cap binds: the error says so
