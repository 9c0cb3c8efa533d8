"""Base for classifier options in policy files: strict, frozen, chosen by ``kind``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from safety_lora.taxonomy import Category


class ClassifierConfig(BaseModel):
    """Options of one classifier entry; subclasses add ``kind: Literal[...]``, ``build()`` and
    ``categories()``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The categories this kind can be set up to score (None: any), and how (for errors).
    CAN_SCORE: ClassVar[frozenset[Category] | None] = None
    HOW: ClassVar[str] = ""

    def categories(self) -> frozenset[Category]:
        """The categories this classifier scores, as configured (policies check coverage)."""
        raise NotImplementedError(f"{type(self).__name__} does not say what it scores")
