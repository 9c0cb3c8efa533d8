"""Base for classifier options in policy files: strict, frozen, chosen by ``kind``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ClassifierConfig(BaseModel):
    """Options of one classifier entry; subclasses add ``kind: Literal[...]`` and ``build()``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
