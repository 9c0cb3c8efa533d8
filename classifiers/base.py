"""The two classifier protocols and the score records they return.

Every backend scores on the same 0..1 scale per :class:`~safety_lora.taxonomy.Category`;
a category a backend cannot judge is simply absent from its scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from safety_lora.taxonomy import Category

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class Region:
    """A detector box in pixel coordinates ``(x0, y0, x1, y1)`` that drove a score."""

    box: tuple[int, int, int, int]
    label: str
    score: float
    category: Category | None = None


@dataclass(frozen=True)
class ImageScores:
    """One image classifier's verdict on one image; ``notes`` is text it gives as evidence (a
    vision-language guard's rationale), kept in the decision's reasons."""

    scores: Mapping[Category, float]
    regions: tuple[Region, ...] = ()
    labels: Mapping[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptScores:
    """One prompt classifier's verdict on one prompt; ``matches`` says what fired."""

    scores: Mapping[Category, float]
    matches: tuple[str, ...] = ()
    normalized: str = ""


@runtime_checkable
class ImageClassifier(Protocol):
    """Scores a batch of images; returns one :class:`ImageScores` per image, in order."""

    name: str
    fingerprint: str

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        """One :class:`ImageScores` per image, in order; categories it cannot judge are left out."""
        ...


@runtime_checkable
class PromptClassifier(Protocol):
    """Scores a batch of prompts; returns one :class:`PromptScores` per prompt, in order."""

    name: str
    fingerprint: str

    def classify(self, prompts: Sequence[str]) -> list[PromptScores]:
        """One :class:`PromptScores` per prompt, in order; categories it cannot judge are absent."""
        ...
