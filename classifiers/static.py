"""``kind: static`` — fixed scores, for tests and dry runs (no model, no randomness)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field, StrictFloat, model_validator

from safety_lora.classifiers.base import ImageScores, PromptScores
from safety_lora.classifiers.config import ClassifierConfig
from safety_lora.taxonomy import Category

if TYPE_CHECKING:
    from PIL.Image import Image

Score = float


def _fingerprint(kind: str, payload: object) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return f"{kind}:" + hashlib.sha256(blob).hexdigest()[:16]


class StaticImageClassifier:
    """Returns ``sequence[i % len(sequence)]`` for the i-th image it has ever seen.

    With one entry every image gets the same scores; with several, successive images
    (and successive calls, e.g. regeneration attempts) walk through the list.
    """

    def __init__(self, *, sequence: Sequence[dict[Category, float]], name: str = "static") -> None:
        if not sequence:
            raise ValueError(
                "static classifier: `scores` or `sequence` must give at least one entry"
            )
        self.name = name
        self._sequence = [dict(s) for s in sequence]
        self._seen = 0
        self.fingerprint = _fingerprint("static", self._sequence)

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        """The sequence's next entries, one per image; the position carries over between calls."""
        out = []
        for _ in images:
            out.append(ImageScores(scores=self._sequence[self._seen % len(self._sequence)]))
            self._seen += 1
        return out


class StaticPromptClassifier:
    """Gives every prompt the same scores."""

    def __init__(self, *, scores: dict[Category, float], name: str = "static") -> None:
        self.name = name
        self._scores = dict(scores)
        self.fingerprint = _fingerprint("static", self._scores)

    def classify(self, prompts: Sequence[str]) -> list[PromptScores]:
        """The fixed scores for every prompt (``normalized``: the prompt unchanged, no matches)."""
        return [PromptScores(scores=self._scores, normalized=p) for p in prompts]


class StaticImageConfig(ClassifierConfig):
    """Fixed image scores; ``sequence`` lets successive images get different scores."""

    HOW = "fixed scores, for tests"
    kind: Literal["static"] = "static"
    scores: dict[Category, StrictFloat] = Field(default_factory=dict)
    sequence: list[dict[Category, StrictFloat]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _scores_something(self) -> StaticImageConfig:
        if not self.categories():
            raise ValueError("a static classifier needs `scores` or `sequence` naming a category")
        return self

    def categories(self) -> frozenset[Category]:
        """Every category named in ``scores`` or in any ``sequence`` entry."""
        return frozenset(c for entry in (self.scores, *self.sequence) for c in entry)

    def build(self) -> StaticImageClassifier:
        """A :class:`StaticImageClassifier` walking ``sequence`` (no sequence: ``scores``)."""
        seq = self.sequence or [self.scores]
        return StaticImageClassifier(sequence=seq)


class StaticPromptConfig(ClassifierConfig):
    """Fixed prompt scores."""

    HOW = "fixed scores, for tests"
    kind: Literal["static"] = "static"
    scores: dict[Category, StrictFloat] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _scores_something(self) -> StaticPromptConfig:
        if not self.scores:
            raise ValueError("a static classifier needs `scores` naming a category")
        return self

    def categories(self) -> frozenset[Category]:
        """The categories named in ``scores``."""
        return frozenset(self.scores)

    def build(self) -> StaticPromptClassifier:
        """A :class:`StaticPromptClassifier` giving ``scores`` to every prompt."""
        return StaticPromptClassifier(scores=self.scores)
