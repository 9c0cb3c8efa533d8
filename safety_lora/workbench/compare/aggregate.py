"""The report's rows, aggregated from a run's units: per method and strength, per trained
adapter, per learning-rate scale and per regularity variant."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from safety_lora.workbench.compare.metrics import BAR, bootstrap, mean_interval, mean_std
from safety_lora.workbench.compare.rows import (
    Attack,
    Cost,
    Evaluation,
    Interval,
    KohyaCheck,
    Row,
    TrainingRun,
)

__all__ = [
    "FamilyMeasure",
    "KohyaSummary",
    "MethodRow",
    "RegularityRow",
    "StabilityRow",
    "TrainingSummary",
    "family_measures",
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


class FamilyMeasure(Row):
    """One named measure of one adapter family on one of the four axes (speed, efficacy,
    stability, regularity): its value, 95% interval (None: one value, no interval) and how
    many values it rests on; ``method`` is the family's main row."""

    family: str
    method: str
    axis: str
    measure: str
    unit: str
    value: float | None
    ci: Interval | None
    n: int


def _measure(axis: str, measure: str, unit: str, values: Sequence[float]) -> dict[str, Any]:
    """A measure's fields: the mean of ``values`` with its bootstrap interval (none for fewer
    than two)."""
    mean = mean_std(values)[0] if values else None
    ci = mean_interval(values) if len(values) > 1 else None
    return {"axis": axis, "measure": measure, "unit": unit, "value": mean, "ci": ci,
            "n": len(values)}  # fmt: skip


def _fixed(
    axis: str, measure: str, unit: str, value: float, ci: Interval | None, n: int = 1
) -> dict[str, Any]:
    """A measure's fields from a value already computed, its interval and what it rests on
    (``n``: seeds, timing pairs)."""
    return {"axis": axis, "measure": measure, "unit": unit, "value": value, "ci": ci, "n": n}


def _family(
    runs: Sequence[TrainingRun],
    training: Sequence[TrainingRun],
    at_one: dict[tuple[str, int], Evaluation],
    row: MethodRow,
    costs: Sequence[Cost],
    attacks: Sequence[Attack],
) -> list[dict[str, Any]]:
    """The fields of one family's measures (``runs``: its main runs, first budget)."""
    method, family, budget = runs[0].method, runs[0].family, runs[0].budget
    reached = [t for t in runs if t.reached_bar]
    out = [
        _measure("speed", "seconds to the bar", "s", [t.seconds_to_bar or 0.0 for t in reached]),
        _measure("speed", "steps to the bar", "steps",
                 [float(t.steps_to_bar or 0) for t in reached]),
        _measure("speed", "training seconds per step", "s", [t.seconds_per_step for t in runs]),
    ]  # fmt: skip
    for mode, name in (("dynamic", "unfused"), ("fused", "fused")):
        cost = next((c for c in costs if c.method == method and c.mode == mode), None)
        if cost is not None:
            out.append(
                _fixed(
                    "speed",
                    f"inference cost {name}",
                    "x base",
                    cost.vs_base,
                    cost.vs_base_ci,
                    cost.pairs,
                )
            )
    out.append(_fixed("efficacy", "concept shown at strength 1.0", "%", row.concept_rate,
                      row.concept_rate_ci, row.seeds))  # fmt: skip
    if row.paraphrase_rate is not None:
        out.append(_fixed("efficacy", "paraphrases shown at strength 1.0", "%",
                          row.paraphrase_rate, row.paraphrase_rate_ci, row.seeds))  # fmt: skip
    attack = next((a for a in attacks if a.method == method), None)
    if attack is not None:
        for name, asr in (
            ("soft prompt", attack.soft_asr),
            ("token search", attack.token_asr),
            ("inversion", attack.inversion_asr),
            ("img2img", attack.img2img_asr),
            ("concept vector", attack.concept_vector_asr),
        ):
            if asr is not None:
                out.append(_fixed("efficacy", f"attack success ({name}, seed 0)", "%", asr, None))
    lr_runs = [t for t in training if t.family == family and t.budget == budget
               and t.role in ("adapter", "stability")]  # fmt: skip
    at_bar = [float(at_one[(t.method, t.seed)].concept_rate <= BAR) for t in lr_runs]
    out.append(_measure("stability", "share of seeds and learning rates at the bar", "%", at_bar))
    preservation = [at_one[(t.method, t.seed)].preservation for t in runs]
    ci = mean_interval(preservation, spread=True) if len(runs) > 1 else None
    measure = "spread of preservation (std over seeds)"
    out.append(_fixed("stability", measure, "%", mean_std(preservation)[1], ci, len(runs)))
    none = {t.seed: t.method for t in training
            if t.family == family and t.variant == "none" and t.budget == budget}  # fmt: skip
    for key, label in (("preservation", "preservation"), ("neighbour_kept", "neighbour kept")):
        pairs = [(at_one[(t.method, t.seed)], at_one[(none[t.seed], t.seed)])
                 for t in runs if t.seed in none]  # fmt: skip
        deltas = [float(getattr(a, key)) - float(getattr(b, key)) for a, b in pairs
                  if getattr(a, key) is not None and getattr(b, key) is not None]  # fmt: skip
        if deltas:
            measure = f"effect of regularisation + early stopping on {label}"
            out.append(_measure("regularity", measure, "points", deltas))
    return out


def family_measures(
    rows: Sequence[MethodRow],
    evaluations: Sequence[Evaluation],
    training: Sequence[TrainingRun],
    costs: Sequence[Cost],
    attacks: Sequence[Attack],
) -> list[FamilyMeasure]:
    """Per adapter family (its main rows, first budget), the four axes as named measures:
    speed (seconds and steps to the bar, training seconds per step, inference cost unfused
    and fused), efficacy (concept and paraphrases shown at 1.0, attack success), stability
    (share of runs over seeds and learning rates at the bar, spread of preservation over
    seeds) and regularity (what regularisation + early stopping change in preservation and
    neighbour kept against the original recipe, paired by seed)."""
    at_one = _at_one(evaluations)
    adapters = [t for t in training if t.role == "adapter"]
    main = [t for t in adapters if t.budget == adapters[0].budget] if adapters else []
    out = []
    for family in dict.fromkeys(t.family for t in main):
        runs = [t for t in main if t.family == family]
        method = runs[0].method
        row = next(r for r in rows if r.method == method and r.strength == 1.0)
        for fields in _family(runs, training, at_one, row, costs, attacks):
            out.append(FamilyMeasure(family=family, method=method, **fields))
    return out
