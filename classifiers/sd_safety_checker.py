"""``kind: sd_safety_checker`` — the pipeline's own Stable Diffusion safety checker as one vote.

The checkpoint's 17 concepts and 3 special-care concepts only, exactly SD's algorithm (see
:mod:`safety_lora.classifiers.clip_concepts`, which does the work): one ``sexual`` score per
image, >= 0.5 where SD would have blacked the image out. Per-concept scores are in ``labels``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, StrictInt, ValidationInfo, field_validator

from safety_lora.classifiers.clip_concepts import ClipConceptsClassifier
from safety_lora.classifiers.config import ClassifierConfig, resolve_local
from safety_lora.taxonomy import Category


class SDSafetyCheckerConfig(ClassifierConfig):
    """A folder (or hub id) with a ``StableDiffusionSafetyChecker`` and its image processor."""

    CAN_SCORE = frozenset({Category.SEXUAL})
    HOW = "needs the safety checker's weights"
    kind: Literal["sd_safety_checker"] = "sd_safety_checker"
    model: str = Field(min_length=1)
    batch_size: StrictInt = Field(default=8, ge=1)
    device: str = "cpu"

    @field_validator("model")
    @classmethod
    def _relative_to_policy(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else resolve_local(value, info, always=False)

    def categories(self) -> frozenset[Category]:
        """Only ``sexual``: SD's checker gives one verdict per image."""
        return frozenset({Category.SEXUAL})

    def build(self) -> ClipConceptsClassifier:
        """A :class:`ClipConceptsClassifier` with the checkpoint's concepts only: the regular ones
        score ``sexual``, the special-care ones only adjust, as in SD."""
        return ClipConceptsClassifier(
            model=self.model,
            category=Category.SEXUAL,
            special_care_category=None,
            batch_size=self.batch_size,
            device=self.device,
            name="sd_safety_checker",
        )
