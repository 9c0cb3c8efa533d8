"""Base for classifier options in policy files: strict, frozen, chosen by ``kind``."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    ValidationInfo,
    model_validator,
)

from safety_lora.taxonomy import Category

__all__ = [
    "BUNDLED",
    "ClassifierConfig",
    "When",
    "cascade_problems",
    "is_local_path",
    "resolve_local",
]

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


_Bound = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]


class When(BaseModel):
    """When an image classifier runs (a cascade stage): only on the images where an earlier
    stage scored ``category`` within ``between`` [low, high] (both ends included), or, with
    ``unjudged: true``, where some category it scores has been scored by no stage run so far.

    An image on which no earlier stage scored ``category`` (its stage was itself skipped) is
    judged: a stage is skipped only on evidence.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Category | None = None
    between: tuple[_Bound, _Bound] | None = None
    unjudged: StrictBool = False

    @model_validator(mode="after")
    def _one_condition(self) -> When:
        band = self.category is not None or self.between is not None
        if band == self.unjudged:
            raise ValueError(
                "give `category` with `between` (a band of an earlier stage's score) or "
                "`unjudged: true`, one of the two"
            )
        if band and (self.category is None or self.between is None):
            raise ValueError("`category` and `between` go together")
        if self.between is not None and self.between[0] > self.between[1]:
            raise ValueError(
                f"`between` must be [low, high] with low <= high, got {list(self.between)}"
            )
        return self

    def admits(
        self,
        scores: Mapping[Category, float],
        judged: Collection[Category],
        scores_here: Collection[Category],
    ) -> bool:
        """Whether the stage runs on an image with ``scores`` so far, ``judged`` the categories
        the stages that ran on it scored, ``scores_here`` the ones this stage scores."""
        if self.category is None or self.between is None:  # `unjudged: true`
            return any(c not in judged for c in scores_here)
        if self.category not in judged:
            return True
        low, high = self.between
        return low <= scores.get(self.category, 0.0) <= high


class ClassifierConfig(BaseModel):
    """Options of one classifier entry; subclasses add ``kind: Literal[...]``, ``build()`` and
    ``categories()``. ``when`` makes an image classifier a cascade stage (see :class:`When`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    when: When | None = None

    #: The categories this kind can be set up to score (None: any), and how (for errors).
    CAN_SCORE: ClassVar[frozenset[Category] | None] = None
    HOW: ClassVar[str] = ""

    def categories(self) -> frozenset[Category]:
        """The categories this classifier scores, as configured (policies check coverage)."""
        raise NotImplementedError(f"{type(self).__name__} does not say what it scores")


def cascade_problems(
    images: Sequence[ClassifierConfig], prompts: Sequence[ClassifierConfig] = ()
) -> list[str]:
    """Why a ``when`` of the policy's classifiers could never hold, one line each (empty: none).

    A stage routes on what earlier stages scored: the first has none, ``category`` must be
    one an earlier stage scores, and an ``unjudged`` stage whose categories all are scored by
    earlier stages that run on every image would never run. Prompt classifiers all run.
    """
    problems = []
    earlier: set[Category] = set()  # scored by some earlier stage
    always: set[Category] = set()  # scored by an earlier stage without `when`
    for i, stage in enumerate(images):
        when, mine = stage.when, stage.categories()
        where = f"classifiers[{i}].when"
        if when is not None and i == 0:
            problems.append(f"{where}: the first classifier has no earlier one to route on")
        elif when is not None and when.category is not None and when.category not in earlier:
            problems.append(
                f"{where}.category: {when.category} is scored by no earlier classifier "
                f"(they score: {_names(earlier)}): the stage could never run"
            )
        elif when is not None and when.unjudged and mine <= always:
            problems.append(
                f"{where}.unjudged: every category it scores ({_names(mine)}) is judged on "
                f"every image by an earlier classifier: the stage could never run"
            )
        earlier |= mine
        if when is None:
            always |= mine
    for i, stage in enumerate(prompts):
        if stage.when is not None:
            problems.append(
                f"prompt.classifiers[{i}].when: every prompt classifier judges every prompt; "
                f"`when` orders image classifiers only"
            )
    return problems


def _names(categories: Collection[Category]) -> str:
    return ", ".join(sorted(c.value for c in categories)) or "nothing"
