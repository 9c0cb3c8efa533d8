"""The report's rows, aggregated from a run's units: per method and strength, per trained
adapter, per learning-rate scale and per regularity variant."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from safety_lora.workbench.compare.metrics import BAR, bootstrap, mean_interval, mean_std
from safety_lora.workbench.compare.rows import (
    Evaluation,
    Interval,
    KohyaCheck,
    Row,
    TrainingRun,
)

__all__ = [
    "KohyaSummary",
    "MethodRow",
    "RegularityRow",
    "StabilityRow",
    "TrainingSummary",
    "kohya_summary",
    "method_rows",
    "regularity",
    "stability",
    "training_summaries",
]

_PROBES = ("paraphrase_rate", "neighbour_kept")
#: Scores with a bootstrap interval; every score has a mean and a std over seeds.
_CI = ("concept_rate", "erasure", "kept", "other", "preservation", *_PROBES)
_KEYS = (*_CI, "block_rate")


class MethodRow(Row):
    """One method at one strength: each score's mean and std over seeds, and each rate's 95%
    bootstrap interval over seeds and prompts (None: not measured)."""

    method: str
    kind: str
    family: str | None
    strength: float
    seeds: int
    concept_rate: float
    concept_rate_std: float
    concept_rate_ci: Interval
    erasure: float
    erasure_std: float
    erasure_ci: Interval
    kept: float | None
    kept_std: float | None
    kept_ci: Interval | None
    other: float
    other_std: float
    other_ci: Interval
    preservation: float
    preservation_std: float
    preservation_ci: Interval
    paraphrase_rate: float | None
    paraphrase_rate_std: float | None
    paraphrase_rate_ci: Interval | None
    neighbour_kept: float | None
    neighbour_kept_std: float | None
    neighbour_kept_ci: Interval | None
    block_rate: float
    block_rate_std: float


class SeedSteps(Row):
    seed: int
    steps_to_bar: int | None
    seconds_to_bar: float | None
    steps: int


class TrainingSummary(Row):
    """One main adapter method over its seeds: cost, and steps and seconds to the bar (mean
    and 95% interval over the seeds that reached it)."""

    method: str
    family: str
    rank: int
    lr: float
    step_budget: int
    trainable_parameters: int
    file_bytes: int
    seconds_per_step: float
    reached_bar: int
    runs: int
    per_seed: list[SeedSteps]
    steps_to_bar: float | None
    steps_to_bar_ci: Interval | None
    seconds_to_bar: float | None
    seconds_to_bar_ci: Interval | None


class StabilityPoint(Row):
    seed: int
    concept_rate: float
    preservation: float


class StabilityRow(Row):
    """One family at one learning-rate scale: runs at the bar and preservation's spread."""

    family: str
    lr_scale: float
    lr: float
    runs: int
    at_bar: int
    reached_bar_in_training: int
    concept_rate: float
    preservation: float
    preservation_std: float
    points: list[StabilityPoint]


class RegularityRow(Row):
    """One regularity variant of a family (seed 0) at strength 1.0."""

    family: str
    method: str
    variant: str
    concept_rate: float
    preservation: float
    steps: int
    kept_step: int
    stopped_early: bool
    steps_to_bar: int | None


class KohyaSummary(Row):
    """Whether the kohya files gave their PEFT files' images, over the seeds checked."""

    seeds: int
    identical: bool | None
    max_pixel_difference: float | None


def method_rows(evaluations: Sequence[Evaluation]) -> list[MethodRow]:
    """One row per (method, strength), in the order the units came."""
    groups: dict[tuple[str, float], list[Evaluation]] = defaultdict(list)
    for e in evaluations:
        groups[(e.method, e.strength)].append(e)
    rows = []
    for (method, strength), units in groups.items():
        stats: dict[str, Any] = {}
        for key in _KEYS:
            values = [v for u in units if (v := getattr(u, key)) is not None]
            stats[key], stats[f"{key}_std"] = mean_std(values) if values else (None, None)
            if key in _CI:
                each = [u.each for u in units]
                stats[f"{key}_ci"] = bootstrap(each, key) if values else None
        first = units[0]
        rows.append(
            MethodRow(method=method, kind=first.kind, family=first.family, strength=strength,
                      seeds=len(units), **stats)
        )  # fmt: skip
    return rows


def training_summaries(training: Sequence[TrainingRun]) -> list[TrainingSummary]:
    """Per main adapter method: cost and steps to the bar over seeds, with intervals."""
    groups: dict[str, list[TrainingRun]] = defaultdict(list)
    for t in training:
        if t.role == "adapter":
            groups[t.method].append(t)
    out = []
    for method, runs in groups.items():
        reached = [r for r in runs if r.reached_bar]
        to_bar: dict[str, Any] = {}
        for key in ("steps_to_bar", "seconds_to_bar"):
            values = [float(getattr(r, key)) for r in reached]
            to_bar[key] = mean_std(values)[0] if values else None
            to_bar[f"{key}_ci"] = mean_interval(values) if values else None
        first = runs[0]
        per_seed = [
            SeedSteps(seed=r.seed, steps_to_bar=r.steps_to_bar, seconds_to_bar=r.seconds_to_bar,
                      steps=r.steps)
            for r in runs
        ]  # fmt: skip
        out.append(
            TrainingSummary(
                method=method, family=first.family, rank=first.rank, lr=first.lr,
                step_budget=first.step_budget, trainable_parameters=first.trainable_parameters,
                file_bytes=first.file_bytes,
                seconds_per_step=mean_std([r.seconds_per_step for r in runs])[0],
                reached_bar=len(reached), runs=len(runs), per_seed=per_seed, **to_bar,
            )
        )  # fmt: skip
    return out


def _at_one(evaluations: Sequence[Evaluation]) -> dict[tuple[str, int], Evaluation]:
    return {(e.method, e.seed): e for e in evaluations if e.strength == 1.0}


def stability(
    evaluations: Sequence[Evaluation], training: Sequence[TrainingRun]
) -> list[StabilityRow]:
    """Per family and learning-rate scale (first budget): runs, share at the bar,
    preservation spread."""
    at_one = _at_one(evaluations)
    groups: dict[tuple[str, float], list[TrainingRun]] = defaultdict(list)
    for t in training:
        if t.role in ("adapter", "stability") and t.budget == training[0].budget:
            groups[(t.family, t.lr_scale)].append(t)
    out = []
    for (family, scale), runs in sorted(groups.items()):
        units = [at_one[(t.method, t.seed)] for t in runs]
        preservation = [u.preservation for u in units]
        concept = [u.concept_rate for u in units]
        mean, std = mean_std(preservation)
        points = [
            StabilityPoint(seed=t.seed, concept_rate=c, preservation=p)
            for t, c, p in zip(runs, concept, preservation, strict=True)
        ]
        out.append(
            StabilityRow(
                family=family, lr_scale=scale, lr=runs[0].lr, runs=len(runs),
                at_bar=sum(c <= BAR for c in concept),
                reached_bar_in_training=sum(t.reached_bar for t in runs),
                concept_rate=mean_std(concept)[0], preservation=mean, preservation_std=std,
                points=points,
            )
        )  # fmt: skip
    return out


_VARIANT_ORDER = {"reg": 0, "no-preserve": 1, "no-early-stop": 2, "none": 3}


def regularity(
    evaluations: Sequence[Evaluation], training: Sequence[TrainingRun]
) -> list[RegularityRow]:
    """Per family, seed 0: each variant at strength 1.0 (the main run is ``reg``)."""
    at_one = _at_one(evaluations)
    out = []
    for t in training:
        if t.seed == 0 and t.role in ("adapter", "variant"):
            u = at_one[(t.method, 0)]
            out.append(
                RegularityRow(
                    family=t.family, method=t.method, variant=t.variant,
                    concept_rate=u.concept_rate, preservation=u.preservation, steps=t.steps,
                    kept_step=t.kept_step, stopped_early=t.stopped_early,
                    steps_to_bar=t.steps_to_bar,
                )
            )  # fmt: skip
    return sorted(out, key=lambda r: (r.family, _VARIANT_ORDER[r.variant]))


def kohya_summary(kohya: Sequence[KohyaCheck]) -> KohyaSummary:
    return KohyaSummary(
        seeds=len(kohya),
        identical=all(k.identical for k in kohya) if kohya else None,
        max_pixel_difference=max((k.max_pixel_difference for k in kohya), default=None),
    )
