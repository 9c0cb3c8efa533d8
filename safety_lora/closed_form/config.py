"""``ClosedFormConfig``: what a closed-form erasure solves for, validated (pydantic v2, frozen).

Each concept is put into every template (``"a {} square"`` -> ``"a red square"``) and paired
with an anchor prompt: the same template with the concept's anchor word in its place
(``anchors``, else ``guide``; ``""`` removes the concept: ``"a red square"`` -> ``"a
square"``). The anchor's text states are token-aligned to the concept prompt's, and the edit
maps the concept's states to

* the anchor's values (``push: 0``): the paper's form, the anchor being UCE's guide concept;
* ``a - push * (c - a)`` (``push > 0``): ESD's target, past the anchor, away from the concept.

``preserve`` prompts keep their values; ``lam`` keeps the weights near the base; ``rounds``
adds RECE's adversarial embeddings (see :mod:`safety_lora.closed_form.solve`). ``push`` and
``lam`` default to the embedded model's measured best for the concept alone
(``benchmarks/closed_form.py``, section ``defaults``); UCE's paper form is ``push 0, lam 0.5``.
No torch here: policy files validate this model without loading a model.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from safety_lora.templates import check_template, fill_template
from safety_lora.textfiles import MAX_ITEMS, Term, Terms, brief_repr

__all__ = ["ClosedFormConfig"]


def _anchor_word(value: str) -> str:
    word = value.strip()
    if value and not word:
        raise ValueError(
            "a blank anchor (only whitespace): write '' to remove the concept, or a word"
        )
    return word


#: An anchor word, stripped: ``''`` (remove the concept) or some text, never only spaces.
_Anchor = Annotated[str, AfterValidator(_anchor_word)]


class ClosedFormConfig(BaseModel):
    """The concepts, anchors, preservation and solver settings of one closed-form edit.

    The adapter: with neither ``rank`` nor ``tolerance``, the exact delta (a LyCORIS ``full``
    adapter); else a LoRA by truncated SVD per module, of rank ``rank``, or of the smallest
    rank whose relative error is at most ``tolerance`` (at most ``rank`` when both are given).
    ``attack_rounds`` > 0 hardens the edit against prompt attacks
    (:mod:`safety_lora.workbench.hardening`; ``attack_steps`` soft-prompt steps per erase
    prompt and round): it runs the UNet, so it takes minutes where the plain solve takes
    seconds, and suits ``safety-lora erase`` more than a start-up solve.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    erase: Terms = Field(min_length=1, description="Concepts to erase.")
    templates: Terms = Field(
        default_factory=lambda: ["{}"],
        min_length=1,
        description="Prompt templates with {} for the concept.",
    )
    guide: _Anchor = Field(
        default="",
        description="Anchor word of the concepts without one in anchors (UCE's guide concept); "
        "'' removes the concept.",
    )
    anchors: dict[Term, _Anchor] = Field(
        default_factory=dict,
        max_length=MAX_ITEMS,
        description="Concept -> the word that takes its place in its anchor prompts.",
    )
    push: Annotated[
        StrictFloat,
        Field(
            ge=0.0,
            le=10.0,
            description="0: UCE's form (the concept takes the anchor's values); ETA > 0: ESD's "
            "target a - ETA (c - a), past the anchor (default: the embedded model's best).",
        ),
    ] = 1.0
    preserve: Terms = Field(
        default_factory=list, description="Prompts whose keys and values must not change."
    )
    preserve_weight: Annotated[
        StrictFloat, Field(ge=0.0, le=1e4, description="Weight of the preserve prompts.")
    ] = 1.0
    lam: Annotated[
        StrictFloat,
        Field(
            gt=0.0,
            le=1e4,
            description="Pull toward the base weights (default: the embedded model's best; "
            "UCE's is 0.5).",
        ),
    ] = 2.0
    rounds: Annotated[
        StrictInt,
        Field(
            ge=0, le=20, description="RECE rounds: re-solve with adversarial embeddings N times."
        ),
    ] = 0
    rece_reg: Annotated[
        StrictFloat,
        Field(
            gt=0.0,
            le=1e4,
            description="Regulariser of RECE's adversarial embeddings (relative to trace(G) / d).",
        ),
    ] = 0.1
    attack_rounds: Annotated[
        StrictInt,
        Field(
            ge=0,
            le=20,
            description="Harden against prompt attacks: N rounds that attack the edit with soft "
            "prompts and erase what they bring back (runs the UNet: minutes, not seconds).",
        ),
    ] = 0
    attack_steps: Annotated[
        StrictInt,
        Field(
            ge=1,
            le=1000,
            description="Soft-prompt steps per erase prompt and attack round.",
        ),
    ] = 20
    rank: Annotated[StrictInt, Field(ge=1, le=4096)] | None = Field(
        default=None,
        description="LoRA rank (truncated SVD, error reported); default: the exact delta.",
    )
    tolerance: Annotated[StrictFloat, Field(gt=0.0, lt=1.0)] | None = Field(
        default=None,
        description="LoRA of the smallest rank per module within this relative error (at most "
        "rank when given).",
    )

    @property
    def exact(self) -> bool:
        """Whether the adapter is the exact delta (no rank, no tolerance)."""
        return self.rank is None and self.tolerance is None

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str]) -> list[str]:
        return [check_template(t) for t in value]

    @model_validator(mode="after")
    def _consistent(self) -> ClosedFormConfig:
        repeated = sorted(c for c, n in Counter(self.erase).items() if n > 1)
        if repeated:
            raise ValueError(f"`erase` names a concept twice: {brief_repr(repeated)}")
        unknown = sorted(set(self.anchors) - set(self.erase))
        if unknown:
            raise ValueError(f"`anchors` names concepts not in `erase`: {brief_repr(unknown)}")
        return self

    def anchor_of(self, concept: str) -> str:
        """The word that takes ``concept``'s place in its anchor prompts."""
        return self.anchors.get(concept, self.guide)

    def pairs(self) -> list[tuple[str, str]]:
        """(erase prompt, anchor prompt) for every concept and template, in order."""
        return [
            (fill_template(t, concept), fill_template(t, self.anchor_of(concept)))
            for concept in self.erase
            for t in self.templates
        ]

    def digest(self) -> str:
        """sha256 of the canonical JSON of every field (part of the start-up cache key)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()
