"""``kind: concept_world`` — colours/shapes of the concept world stand in for harm categories.

``unsafe: {sexual: [red]}`` scores ``sexual`` 1.0 on every image in which the analyser sees
a red object (any object, not only the largest), else 0.0. A term is a colour (``red``), a
shape (``triangle``), a fill style (``striped``, world 2) or several of them (``red
triangle``: only red triangles; ``striped red``: only striped red objects).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from safety_lora.classifiers.base import ImageScores, Region
from safety_lora.classifiers.config import ClassifierConfig
from safety_lora.concept_world.world import COLOURS, SHAPES, STYLES
from safety_lora.taxonomy import Category
from safety_lora.textfiles import Terms, brief_repr

if TYPE_CHECKING:
    from PIL.Image import Image

    from safety_lora.concept_world.analyser import DetectedObject

#: Bumped whenever the analyser's decisions change, so audit fingerprints change with them.
ANALYSER_VERSION = 1


Spec = tuple[str | None, str | None, str | None]


def _parse_term(term: str) -> Spec | None:
    """``(colour, shape, style)`` a term asks for, or None when it names anything unknown."""
    words = term.lower().split()
    found = [[w for w in words if w in vocabulary] for vocabulary in (COLOURS, SHAPES, STYLES)]
    if not words or any(len(f) > 1 for f in found) or sum(map(len, found)) != len(words):
        return None
    colour, shape, style = (f[0] if f else None for f in found)
    return colour, shape, style


def _matches(obj: DetectedObject, spec: Spec) -> bool:
    return all(
        want is None or want == got
        for want, got in zip(spec, (obj.colour, obj.shape, obj.style), strict=True)
    )


class ConceptWorldClassifier:
    """Scores each category 1.0 where any detected object matches one of its unsafe terms."""

    def __init__(self, *, unsafe: dict[Category, list[str]], name: str = "concept_world") -> None:
        terms: dict[Category, list[tuple[str, Spec]]] = {}
        for category, names in unsafe.items():
            parsed = []
            for term in names:
                spec = _parse_term(term)
                if spec is None:
                    raise ValueError(f"concept_world: unknown term {term!r} for {category}")
                parsed.append((term, spec))
            terms[Category(category)] = parsed
        self.name = name
        self._terms = terms
        payload = {str(c): [t for t, _ in ts] for c, ts in sorted(terms.items())}
        blob = json.dumps({"unsafe": payload, "analyser": ANALYSER_VERSION}, sort_keys=True)
        self.fingerprint = "concept_world:" + hashlib.sha256(blob.encode()).hexdigest()[:16]

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        """Per image, 1.0 for each category with a term matching any analysed object (else 0.0),
        a :class:`Region` per match, and every object's ``colour shape`` in ``labels``."""
        from safety_lora.concept_world.analyser import analyse

        out = []
        for image in images:
            objects = analyse(image).objects
            scores: dict[Category, float] = {}
            regions = []
            for category, terms in self._terms.items():
                hits = [
                    (term, obj) for term, spec in terms for obj in objects if _matches(obj, spec)
                ]
                scores[category] = 1.0 if hits else 0.0
                regions += [Region(obj.box, term, 1.0, category) for term, obj in hits]
            labels = {f"{o.colour} {o.shape}": 1.0 for o in objects}
            out.append(ImageScores(scores=scores, regions=tuple(regions), labels=labels))
        return out


class ConceptWorldConfig(ClassifierConfig):
    """Which concept-world colours/shapes/styles count as which harm category."""

    HOW = "colours/shapes/styles of the embedded model"
    kind: Literal["concept_world"] = "concept_world"
    unsafe: dict[Category, Terms] = Field(default_factory=dict)

    @field_validator("unsafe")
    @classmethod
    def _known_terms(cls, value: dict[Category, list[str]]) -> dict[Category, list[str]]:
        bad = sorted({t for terms in value.values() for t in terms if _parse_term(t) is None})
        if bad:
            allowed = ", ".join([*COLOURS, *SHAPES, *STYLES])
            raise ValueError(
                f"unknown concept_world term(s) {brief_repr(bad)}; use a colour, a shape, a style "
                f"or one of each ('striped red triangle') from: {allowed}"
            )
        return value

    def categories(self) -> frozenset[Category]:
        """The categories given at least one term."""
        return frozenset(c for c, terms in self.unsafe.items() if terms)

    def build(self) -> ConceptWorldClassifier:
        """A :class:`ConceptWorldClassifier` for these terms (no model: the analyser is code)."""
        return ConceptWorldClassifier(unsafe=self.unsafe)
