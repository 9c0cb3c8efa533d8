"""What a compare run's units produce, one typed row per kind (frozen pydantic models).

A unit's row is cached as JSON under ``out/units/`` (``model_dump_json``, read back with
``model_validate_json``); the field names are the keys of ``report.json``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Attack",
    "Cost",
    "Evaluation",
    "Interval",
    "KohyaCheck",
    "Probe",
    "Results",
    "Row",
    "Solve",
    "TrainingRun",
]

#: A 95% interval (low, high).
Interval = tuple[float, float]


class Row(BaseModel):
    """A frozen row whose JSON round-trips (the unit cache, ``report.json``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Evaluation(Row):
    """One method at one strength on one seed: the :class:`~.metrics.Scores` and what was
    measured; ``family`` is set for the adapters' rows when gathered (not cached)."""

    method: str
    kind: str
    strength: float
    seed: int
    seconds: float
    concept_rate: float
    erasure: float
    kept: float | None
    other: float
    preservation: float
    block_rate: float
    images: int
    each: dict[str, list[float] | None]
    paraphrase_rate: float | None = None
    neighbour_kept: float | None = None
    family: str | None = None


class KohyaCheck(Evaluation):
    """The kohya file of a seed's PEFT LoRA, evaluated at 1.0, and how far its images are
    from the PEFT file's (0: identical)."""

    max_pixel_difference: float
    identical: bool


class Probe(Row):
    """One erasure probe of a training run: concept rate after ``step`` steps."""

    step: int
    seconds: float
    concept_rate: float


class TrainingRun(Row):
    """One adapter trained (``role``: adapter, variant or stability) and its erasure curve."""

    method: str
    role: str
    family: str
    rank: int
    budget: int
    seed: int
    variant: str
    lr: float
    lr_scale: float
    step_budget: int
    path: str
    trainable_parameters: int
    file_bytes: int
    seconds_per_step: float
    training_seconds: float
    steps: int
    kept_step: int
    stopped_early: bool
    curve: list[Probe]
    reached_bar: bool
    steps_to_bar: int | None
    seconds_to_bar: float | None


class Solve(Row):
    """A method made in ``seconds`` without training: the closed-form edit (written to
    ``path``), text-embedding steering's concept directions (encoded, no file)."""

    path: str | None
    seconds: float
    method: str = "closed form"


class Attack(Row):
    """The attacks' success on one method at strength 1.0 (None: that attack did not run);
    ``*_base_asr``: the same attack inputs on the base model (nothing erased);
    ``seconds_per_attempt``: the mean over the attacks run."""

    method: str
    clean: float
    budget: int
    seconds_per_attempt: float
    soft_asr: float | None = None
    token_asr: float | None = None
    inversion_asr: float | None = None
    inversion_base_asr: float | None = None
    img2img_asr: float | None = None
    img2img_base_asr: float | None = None
    concept_vector_asr: float | None = None
    concept_vector_base_asr: float | None = None


class Cost(Row):
    """A method's per-step cost against the base model's, in interleaved pairs."""

    method: str
    mode: str
    seconds_per_step: float
    base_seconds_per_step: float
    vs_base: float
    vs_base_ci: Interval
    pairs: int
    batch: int
    extra_unet_calls_per_step: float = 0.0


class Results(BaseModel):
    """What the groups of a run produce, in report order."""

    evaluations: list[Evaluation] = Field(default_factory=list)
    training: list[TrainingRun] = Field(default_factory=list)
    kohya: list[KohyaCheck] = Field(default_factory=list)
    solves: list[Solve] = Field(default_factory=list)
    attacks: list[Attack] = Field(default_factory=list)
    costs: list[Cost] = Field(default_factory=list)

    def extend(self, other: Results) -> None:
        """Append ``other``'s rows after this one's."""
        for name in type(self).model_fields:
            getattr(self, name).extend(getattr(other, name))
