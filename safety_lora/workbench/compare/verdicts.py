"""The founding question's claims, each answered from a run's numbers and their intervals.

A comparison of A (the side a claim says is better) with B on one measure is *supported*
when A's 95% interval lies wholly on the better side of B's, *refuted* when it lies wholly on
the worse side, and *no measurable difference* when the two intervals overlap. A claim is
supported when every comparison is, refuted when any is, and otherwise no measurable
difference (its rows say which parts were).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from safety_lora.workbench.compare.metrics import BAR, bootstrap, mean_interval, overlap
from safety_lora.workbench.compare.rows import Evaluation, Interval, TrainingRun

__all__ = ["Comparison", "Verdict", "claims", "compare", "summary"]

#: A value and its 95% interval.
Measured = tuple[float, Interval]

SUPPORTED, REFUTED, SAME = "supported", "refuted", "no measurable difference"


@dataclass(frozen=True)
class Comparison:
    """One measure of a claim: A's and B's value and interval, and what they decide."""

    claim: str
    measure: str
    a: str
    b: str
    a_value: float
    a_ci: Interval
    b_value: float
    b_ci: Interval
    verdict: str


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict and the comparisons that decided it (none: intervals overlap)."""

    claim: str
    verdict: str
    decided_by: list[str]


def compare(a: Measured, b: Measured, *, lower: bool) -> str:
    """The verdict on "A is better than B" (``lower``: lower values are better)."""
    (_, a_ci), (_, b_ci) = a, b
    if overlap(a_ci, b_ci):
        return SAME
    a_better = a_ci[1] < b_ci[0] if lower else a_ci[0] > b_ci[1]
    return SUPPORTED if a_better else REFUTED


def _units(
    evaluations: Sequence[Evaluation], method: str, seeds: Sequence[int]
) -> list[Evaluation]:
    return [e for e in evaluations if e.method == method and e.strength == 1.0 and e.seed in seeds]


def _scored(units: Sequence[Evaluation], measure: str) -> Measured:
    """Mean over seeds and images, and the bootstrap interval over both."""
    mean = sum(getattr(u, measure) for u in units) / len(units)
    return mean, bootstrap([u.each for u in units], measure)


def _spread(units: Sequence[Evaluation], measure: str) -> Measured:
    """Standard deviation over seeds of the per-seed value, and its bootstrap interval."""
    values = [float(getattr(u, measure)) for u in units]
    mean = sum(values) / len(values)
    std = (
        (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        if len(values) > 1
        else 0.0
    )
    return std, mean_interval(values, spread=True)


def _share(values: Sequence[float]) -> Measured:
    return sum(values) / len(values), mean_interval(values)


def _to_bar(main: Sequence[TrainingRun], method: str) -> list[float] | None:
    """Training seconds to the bar of ``method``'s runs; None when one did not reach it."""
    times = [t.seconds_to_bar for t in main if t.method == method]
    return None if None in times else [s for s in times if s is not None]


def _measured(units: Sequence[Evaluation], measure: str) -> bool:
    """Whether every unit measured ``measure`` (the probes: concept world, strength 1.0)."""
    return bool(units) and all(getattr(u, measure) is not None for u in units)


def _comparison(
    claim: str, measure: str, a: str, b: str, av: Measured, bv: Measured, *, lower: bool
) -> Comparison:
    verdict = compare(av, bv, lower=lower)
    return Comparison(claim, measure, a, b, av[0], av[1], bv[0], bv[1], verdict)


#: What the factorised claim always compares at strength 1.0: (measure, label, lower is better).
_ACCURACY = (("concept_rate", "concept shown", True), ("preservation", "preservation", False))
#: The probes a claim also compares where measured.
_PROBES = (
    ("paraphrase_rate", "paraphrases shown", True),
    ("neighbour_kept", "neighbour kept", False),
)


def _factorised(
    evaluations: Sequence[Evaluation], main: Sequence[TrainingRun], lora: str, f: str
) -> list[Comparison]:
    """Factorised family ``f`` against ``lora``: training time to the bar (when every run
    reached it), then accuracy at strength 1.0 over every main seed."""
    claim = "the factorised family is faster and more accurate"
    seeds = sorted({t.seed for t in main})
    mine, theirs = _units(evaluations, f, seeds), _units(evaluations, lora, seeds)
    out = []
    fast, slow = _to_bar(main, f), _to_bar(main, lora)
    if fast is not None and slow is not None:
        measure = "training seconds to the bar"
        out.append(_comparison(claim, measure, f, lora, _share(fast), _share(slow), lower=True))
    measured = [m for m in _PROBES if _measured([*mine, *theirs], m[0])]
    for measure, label, lower in [*_ACCURACY, *measured]:
        a, b = _scored(mine, measure), _scored(theirs, measure)
        out.append(_comparison(claim, f"{label} at strength 1.0", f, lora, a, b, lower=lower))
    return out


def _regularity(
    evaluations: Sequence[Evaluation], lora: str, original: str, stability_seeds: int
) -> list[Comparison]:
    """``lora`` against ``original`` (no preservation, no early stopping) on the stability
    seeds, where both have every one: spread, share at the bar, concept and paraphrases."""
    seeds = list(range(stability_seeds))
    reg, none = _units(evaluations, lora, seeds), _units(evaluations, original, seeds)
    if not len(reg) == len(none) == len(seeds):
        return []
    on = f"({len(seeds)} seeds, the runs without regularisation have)"
    claim = "PEFT LoRA with regularisation and early stopping is more stable"
    out = [
        _comparison(claim, f"spread over seeds of {label} at 1.0 (std) {on}", lora, original,
                    _spread(reg, measure), _spread(none, measure), lower=True)
        for measure, label in (("preservation", "preservation"), ("concept_rate", "concept shown"))
    ]  # fmt: skip
    passed = [_share([float(u.concept_rate <= BAR) for u in us]) for us in (reg, none)]
    measure = f"share of seeds at or under the bar at 1.0 {on}"
    out.append(_comparison(claim, measure, lora, original, *passed, lower=False))
    # effective = erasing: the concept shown at the bar's strength
    claim = "the original LoRA without regularisation is less effective"
    said = [("concept_rate", "concept shown")]
    if _measured([*reg, *none], "paraphrase_rate"):
        said.append(("paraphrase_rate", "paraphrases shown"))
    for measure, label in said:
        a, b = _scored(reg, measure), _scored(none, measure)
        out.append(_comparison(claim, f"{label} at strength 1.0 {on}", lora, original, a, b,
                               lower=True))  # fmt: skip
    return out


def claims(
    evaluations: Sequence[Evaluation],
    training: Sequence[TrainingRun],
    *,
    lora: str | None,
    factorised: Sequence[str],
    original: str | None,
    stability_seeds: int,
) -> list[Comparison]:
    """Every comparison the run can make: ``lora`` and ``factorised`` name the main rows of
    the families (``None``/empty when not trained), ``original`` LoRA without preservation or
    early stopping (``None`` without regularity runs)."""
    if lora is None:
        return []
    main = [t for t in training if t.role == "adapter"]
    out = [c for f in factorised for c in _factorised(evaluations, main, lora, f)]
    if original is not None:
        out += _regularity(evaluations, lora, original, stability_seeds)
    return out


def summary(comparisons: Sequence[Comparison]) -> list[Verdict]:
    """One verdict per claim (rule in the module docstring), with the parts that decided it."""
    out = []
    for claim in dict.fromkeys(c.claim for c in comparisons):
        mine = [c for c in comparisons if c.claim == claim]
        verdicts = {c.verdict for c in mine}
        verdict = SUPPORTED if verdicts == {SUPPORTED} else REFUTED if REFUTED in verdicts else SAME
        parts = [f"{c.a} vs {c.b}, {c.measure}: {c.verdict}" for c in mine if c.verdict != SAME]
        out.append(Verdict(claim, verdict, parts))
    return out
