"""The founding question's claims, each answered from a run's numbers and their intervals.

A comparison of A (the side a claim says is better) with B on one measure is *supported*
when A's 95% interval lies wholly on the better side of B's, *refuted* when it lies wholly on
the worse side, and *no measurable difference* when the two intervals overlap. A claim is
supported when every comparison is, refuted when any is, and otherwise no measurable
difference (its rows say which parts were).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from safety_lora.workbench.compare.metrics import BAR, bootstrap, mean_interval, overlap

__all__ = ["Comparison", "claims", "compare"]

SUPPORTED, REFUTED, SAME = "supported", "refuted", "no measurable difference"


@dataclass(frozen=True)
class Comparison:
    """One measure of a claim: A's and B's value and interval, and what they decide."""

    claim: str
    measure: str
    a: str
    b: str
    a_value: float
    a_ci: tuple[float, float]
    b_value: float
    b_ci: tuple[float, float]
    verdict: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(
    a: tuple[float, tuple[float, float]], b: tuple[float, tuple[float, float]], *, lower: bool
) -> str:
    """The verdict on "A is better than B" (``lower``: lower values are better)."""
    (_, a_ci), (_, b_ci) = a, b
    if overlap(a_ci, b_ci):
        return SAME
    a_better = a_ci[1] < b_ci[0] if lower else a_ci[0] > b_ci[1]
    return SUPPORTED if a_better else REFUTED


def _units(evaluations: Sequence[dict[str, Any]], method: str, seeds: Sequence[int]) -> list[Any]:
    return [
        e
        for e in evaluations
        if e["method"] == method and float(e["strength"]) == 1.0 and e["seed"] in seeds
    ]


def _scored(units: Sequence[dict[str, Any]], measure: str) -> tuple[float, tuple[float, float]]:
    """Mean over seeds and images, and the bootstrap interval over both."""
    mean = sum(u[measure] for u in units) / len(units)
    return mean, bootstrap(units, measure)


def _spread(units: Sequence[dict[str, Any]], measure: str) -> tuple[float, tuple[float, float]]:
    """Standard deviation over seeds of the per-seed value, and its bootstrap interval."""
    values = [float(u[measure]) for u in units]
    mean = sum(values) / len(values)
    std = (
        (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        if len(values) > 1
        else 0.0
    )
    return std, mean_interval(values, spread=True)


def _share(values: Sequence[float]) -> tuple[float, tuple[float, float]]:
    return sum(values) / len(values), mean_interval(values)


#: The probes a claim also compares where measured: (measure, label, lower is better).
_PROBES = (
    ("paraphrase_rate", "paraphrases shown", True),
    ("neighbour_kept", "neighbour kept", False),
)


def _measured(units: Sequence[dict[str, Any]], measure: str) -> bool:
    """Whether every unit measured ``measure`` (the probes: concept world, strength 1.0)."""
    return bool(units) and all(u.get(measure) is not None for u in units)


def claims(
    evaluations: Sequence[dict[str, Any]],
    training: Sequence[dict[str, Any]],
    *,
    lora: str | None,
    factorised: Sequence[str],
    original: str | None,
    stability_seeds: int,
) -> list[Comparison]:
    """Every comparison the run can make: ``lora`` and ``factorised`` name the main rows of
    the families (``None``/empty when not trained), ``original`` LoRA without preservation or
    early stopping (``None`` without regularity runs)."""
    out: list[Comparison] = []
    main = [t for t in training if t["role"] == "adapter"]
    all_seeds = sorted({t["seed"] for t in main})

    def add(claim: str, measure: str, a: str, b: str, av: Any, bv: Any, lower: bool) -> None:
        out.append(
            Comparison(
                claim, measure, a, b, av[0], av[1], bv[0], bv[1], compare(av, bv, lower=lower)
            )
        )

    if lora is not None:
        lora_units = _units(evaluations, lora, all_seeds)
        for f in factorised:
            claim = "the factorised family is faster and more accurate"
            f_units = _units(evaluations, f, all_seeds)
            times = {m: [t["seconds_to_bar"] for t in main if t["method"] == m] for m in (f, lora)}
            if all(v is not None for m in (f, lora) for v in times[m]):
                add(
                    claim,
                    "training seconds to the bar",
                    f,
                    lora,
                    _share(times[f]),
                    _share(times[lora]),
                    lower=True,
                )
            add(
                claim,
                "concept shown at strength 1.0",
                f,
                lora,
                _scored(f_units, "concept_rate"),
                _scored(lora_units, "concept_rate"),
                True,
            )
            add(
                claim,
                "preservation at strength 1.0",
                f,
                lora,
                _scored(f_units, "preservation"),
                _scored(lora_units, "preservation"),
                False,
            )
            for measure, label, lower in _PROBES:
                if _measured([*f_units, *lora_units], measure):
                    args = (_scored(f_units, measure), _scored(lora_units, measure))
                    add(claim, f"{label} at strength 1.0", f, lora, *args, lower)
    if lora is not None and original is not None:
        seeds = list(range(stability_seeds))
        reg, none = _units(evaluations, lora, seeds), _units(evaluations, original, seeds)
        if len(reg) == len(none) == len(seeds):
            on = f"({len(seeds)} seeds, the runs without regularisation have)"
            claim = "PEFT LoRA with regularisation and early stopping is more stable"
            for measure, label in (
                ("preservation", "preservation"),
                ("concept_rate", "concept shown"),
            ):
                add(
                    claim,
                    f"spread over seeds of {label} at 1.0 (std) {on}",
                    lora,
                    original,
                    _spread(reg, measure),
                    _spread(none, measure),
                    lower=True,
                )
            passed = {
                m: [float(u["concept_rate"] <= BAR) for u in us]
                for m, us in ((lora, reg), (original, none))
            }
            add(
                claim,
                f"share of seeds at or under the bar at 1.0 {on}",
                lora,
                original,
                _share(passed[lora]),
                _share(passed[original]),
                lower=False,
            )
            # effective = erasing: the concept shown at the bar's strength
            claim = "the original LoRA without regularisation is less effective"
            add(
                claim,
                f"concept shown at strength 1.0 {on}",
                lora,
                original,
                _scored(reg, "concept_rate"),
                _scored(none, "concept_rate"),
                lower=True,
            )
            if _measured([*reg, *none], "paraphrase_rate"):
                args = (_scored(reg, "paraphrase_rate"), _scored(none, "paraphrase_rate"))
                add(claim, f"paraphrases shown at strength 1.0 {on}", lora, original, *args, True)
    return out


def summary(comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """One verdict per claim (rule in the module docstring), with the parts that decided it."""
    out = []
    for claim in dict.fromkeys(c.claim for c in comparisons):
        mine = [c for c in comparisons if c.claim == claim]
        verdicts = {c.verdict for c in mine}
        verdict = SUPPORTED if verdicts == {SUPPORTED} else REFUTED if REFUTED in verdicts else SAME
        parts = [f"{c.a} vs {c.b}, {c.measure}: {c.verdict}" for c in mine if c.verdict != SAME]
        out.append({"claim": claim, "verdict": verdict, "decided_by": parts})
    return out
