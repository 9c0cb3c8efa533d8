"""Base for classifier options in policy files: strict, frozen, chosen by ``kind``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, ValidationInfo

from safety_lora.taxonomy import Category

__all__ = ["BUNDLED", "ClassifierConfig", "is_local_path", "resolve_local"]

#: The value naming a file that ships inside the package (rules, heads).
BUNDLED = "bundled"


def is_local_path(value: str) -> bool:
    """Whether a ``model`` value is meant as a local path (``./x``, ``../x``, ``/x``, ``~/x``)
    rather than a hub id (``org/name``)."""
    return value.startswith(("/", "./", "../", "~")) or value in (".", "..")


def resolve_local(value: str, info: ValidationInfo, *, always: bool = True) -> str:
    """``value`` resolved against the policy file's folder (validation context ``base``).

    ``always=False`` resolves only what :func:`is_local_path` calls a path, or what exists
    relative to that folder (a hub id stays as is); ``bundled`` and absolute paths stay.
    """
    base = (info.context or {}).get("base")
    if value == BUNDLED or base is None:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = (Path(base) / path).resolve()
    if always or is_local_path(value) or candidate.exists():
        return str(candidate)
    return value


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
