"""The founding question's claims, each answered from a run's numbers and their intervals.

Every comparison of A (the side a claim says is better) with B on one measure has a
*practical-equivalence margin* stated up front (:data:`MARGINS`: +-10 points of a rate,
+-25% of B's time to the bar, ...) and the 95% bootstrap interval of the *difference*
"how much better A is" (positive: as the claim says; the bootstrap is paired, every method
seeing the same prompts and noise). The decision rule, printed by the report:

* **supported** when the whole interval lies above ``+margin``;
* **refuted** when it lies below ``-margin``;
* **equivalent** when it lies inside ``[-margin, +margin]``: two one-sided tests (TOST), each
  at 2.5%, i.e. at the interval's 95% level;
* **inconclusive** otherwise, with the seeds the run would need to decide
  (:func:`seeds_needed`: a normal-approximation sample size from the interval's spread).

A comparison of accuracy between two adapter families of which one (or both) did not reach
the erasure bar on every seed is **inconclusive (did not converge)**, never supported or
refuted: it would compare an unfinished training. Time to the bar is compared all the same: a
run short of the bar counts at its whole training time, a lower bound of its time to the bar
(*censored*). With A's runs censored the true difference is at most the computed one, so only
*refuted* stands; with B's, at least, so only *supported*; anything else (or both censored) is
inconclusive (did not converge). A family that never got to the bar while the other did is
thus found slower when even its lower bound is, instead of leaving the claim undecided.

A claim says "better" on every measure it lists, so it is supported when every comparison
is, refuted when any is (or when the others are supported and some equivalent: not better on
every measure), equivalent when every comparison is, and inconclusive otherwise (did not
converge, when a part did not).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from safety_lora.workbench.compare.metrics import (
    BAR,
    bootstrap_draws,
    mean_draws,
    percentile_interval,
)
from safety_lora.workbench.compare.rows import Evaluation, Interval, TrainingRun

__all__ = [
    "EQUIVALENT",
    "INCONCLUSIVE",
    "LEVEL",
    "MARGINS",
    "NOT_CONVERGED",
    "POWER",
    "REFUTED",
    "SUPPORTED",
    "Comparison",
    "Margin",
    "Verdict",
    "claims",
    "decide",
    "seeds_needed",
    "summary",
]

SUPPORTED, REFUTED, EQUIVALENT = "supported", "refuted", "equivalent"
INCONCLUSIVE, NOT_CONVERGED = "inconclusive", "inconclusive (did not converge)"
#: The intervals' level, and the power :func:`seeds_needed` plans for.
LEVEL, POWER = 0.95, 0.80


@dataclass(frozen=True)
class Margin:
    """A measure's practical-equivalence margin: ``value`` in its unit (a share: points / 100),
    or, ``relative``, that share of B's value."""

    value: float
    relative: bool = False

    def of(self, reference: float) -> float:
        """The margin in the measure's unit, B's value being ``reference``."""
        return self.value * abs(reference) if self.relative else self.value

    @property
    def text(self) -> str:
        """``±10 points`` or ``±25% of B``."""
        return f"±{self.value:.0%} of B" if self.relative else f"±{100 * self.value:g} points"


#: Each measure's margin: differences inside it are too small to matter.
MARGINS: dict[str, Margin] = {
    "seconds to the bar": Margin(0.25, relative=True),
    "concept shown": Margin(0.10),
    "preservation": Margin(0.10),
    "paraphrases shown": Margin(0.10),
    "neighbour kept": Margin(0.10),
    "spread of preservation": Margin(0.05),
    "spread of concept shown": Margin(0.05),
    "share of seeds at the bar": Margin(0.20),
}


@dataclass(frozen=True)
class Comparison:
    """One measure of a claim: A's and B's value and interval, the difference "A better by"
    (positive: as the claim says) with its interval, the margin, and what they decide."""

    claim: str
    measure: str
    a: str
    b: str
    a_value: float
    a_ci: Interval
    b_value: float
    b_ci: Interval
    difference: float
    difference_ci: Interval
    margin: float
    margin_text: str
    seeds: int
    verdict: str
    seeds_needed: int | None = None
    #: Whether the measure is a share (shown in points) rather than seconds.
    share: bool = True


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict, the comparisons that decided it, each measure's margin, and
    (inconclusive) the seeds that would decide it (None: no number of seeds, or not
    inconclusive)."""

    claim: str
    verdict: str
    decided_by: list[str]
    margins: list[str]
    seeds: int
    seeds_needed: int | None = None


def decide(difference_ci: Interval, margin: float) -> str:
    """The rule of the module docstring on "A is better by ``difference_ci``"."""
    lo, hi = difference_ci
    if lo > margin:
        return SUPPORTED
    if hi < -margin:
        return REFUTED
    if -margin <= lo and hi <= margin:
        return EQUIVALENT
    return INCONCLUSIVE


def seeds_needed(difference_ci: Interval, margin: float, seeds: int) -> int | None:
    """Seeds at which the difference's interval would clear the margin, if its centre and
    spread held (normal approximation).

    The interval's half-width ``h`` is ``z * sd / sqrt(n)`` with ``z`` the :data:`LEVEL`
    quantile, so the per-seed ``sd`` is ``h * sqrt(seeds) / z``. The interval is decided when
    its half-width is under ``gap = | |centre| - margin |`` (outside the margin for
    supported/refuted, inside it for equivalent); with power :data:`POWER`:
    ``n = ceil(((z + z_power) * sd / gap) ** 2)``, more than twice ``seeds`` for an undecided
    interval. The centre, not the point estimate, since a bootstrap interval of a spread over
    few seeds is lopsided around it. None: the centre sits on the margin (no number of seeds
    decides it).
    """
    normal = NormalDist()
    z = normal.inv_cdf(1 - (1 - LEVEL) / 2)
    lo, hi = difference_ci
    sd = (hi - lo) / 2 * math.sqrt(seeds) / z
    gap = abs(abs((lo + hi) / 2) - margin)
    if gap < 1e-12:
        return None
    return math.ceil(((z + normal.inv_cdf(POWER)) * sd / gap) ** 2)


def _units(
    evaluations: Sequence[Evaluation], method: str, seeds: Sequence[int]
) -> list[Evaluation]:
    return [e for e in evaluations if e.method == method and e.strength == 1.0 and e.seed in seeds]


def _compared(
    claim: str,
    key: str,
    where: str,
    names: tuple[str, str],
    values: tuple[float, float],
    draws: tuple[np.ndarray, np.ndarray],
    *,
    lower: bool,
    seeds: int,
    converged: bool = True,
    share: bool = True,
) -> Comparison:
    """The comparison of A and B (``values``, bootstrap ``draws``) on the measure ``key``
    (its margin's) ``where`` (at which strength, over what)."""
    (av, bv), (ad, bd) = values, draws
    sign = -1.0 if lower else 1.0
    difference, diff_draws = sign * (av - bv), sign * (ad - bd)
    ci = percentile_interval(diff_draws, LEVEL)
    rule = MARGINS[key]
    margin = rule.of(bv)
    verdict = decide(ci, margin) if converged else NOT_CONVERGED
    needed = seeds_needed(ci, margin, seeds) if verdict == INCONCLUSIVE else None
    return Comparison(
        claim, key + where, names[0], names[1], av, percentile_interval(ad, LEVEL), bv,
        percentile_interval(bd, LEVEL), difference, ci, margin, rule.text, seeds, verdict,
        needed, share,
    )  # fmt: skip


def _scored(units: Sequence[Evaluation], measure: str) -> tuple[float, np.ndarray]:
    """Mean over seeds and images, and the bootstrap draws over both."""
    mean = sum(getattr(u, measure) for u in units) / len(units)
    return mean, bootstrap_draws([u.each for u in units], measure)


def _spread(units: Sequence[Evaluation], measure: str) -> tuple[float, np.ndarray]:
    """Standard deviation over seeds of the per-seed value, and its bootstrap draws."""
    values = [float(getattr(u, measure)) for u in units]
    mean = sum(values) / len(values)
    std = (
        (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        if len(values) > 1
        else 0.0
    )
    return std, mean_draws(values, spread=True)


def _share(values: Sequence[float]) -> tuple[float, np.ndarray]:
    return sum(values) / len(values), mean_draws(values)


def _to_bar(main: Sequence[TrainingRun], method: str) -> tuple[list[float], bool]:
    """Training seconds to the bar of ``method``'s runs (a run short of it: its whole training
    time, a lower bound), and whether any run is such a lower bound (censored)."""
    runs = [t for t in main if t.method == method]
    times = [t.training_seconds if t.seconds_to_bar is None else t.seconds_to_bar for t in runs]
    return times, any(t.seconds_to_bar is None for t in runs)


def _censored(verdict: str, *, a: bool, b: bool) -> str:
    """The verdict that stands on a difference "A better by" computed from censored times
    (module docstring): A's censored, at most refuted; B's, at least supported."""
    if a and b:
        return NOT_CONVERGED
    if a:
        return verdict if verdict == REFUTED else NOT_CONVERGED
    if b:
        return verdict if verdict == SUPPORTED else NOT_CONVERGED
    return verdict


def _measured(units: Sequence[Evaluation], measure: str) -> bool:
    """Whether every unit measured ``measure`` (the probes: concept world, strength 1.0)."""
    return bool(units) and all(getattr(u, measure) is not None for u in units)


#: What the factorised claim always compares at strength 1.0: (measure, label, lower is better).
_ACCURACY = (("concept_rate", "concept shown", True), ("preservation", "preservation", False))
#: The probes a claim also compares where measured.
_PROBES = (
    ("paraphrase_rate", "paraphrases shown", True),
    ("neighbour_kept", "neighbour kept", False),
)
FACTORISED = "the factorised family is faster and more accurate"
STABLE = "PEFT LoRA with regularisation and early stopping is more stable"
EFFECTIVE = "the original LoRA without regularisation is less effective"


def _factorised(
    evaluations: Sequence[Evaluation], main: Sequence[TrainingRun], lora: str, f: str
) -> list[Comparison]:
    """Factorised family ``f`` against ``lora``: training time to the bar (censored where a
    run fell short), then accuracy at strength 1.0 over every main seed; accuracy is
    inconclusive (did not converge) unless both reached the bar on every seed."""
    seeds = sorted({t.seed for t in main})
    mine, theirs = _units(evaluations, f, seeds), _units(evaluations, lora, seeds)
    out = []
    (fast, a_short), (slow, b_short) = _to_bar(main, f), _to_bar(main, lora)
    converged = not (a_short or b_short)
    n = len(seeds)
    if fast and slow:
        (av, ad), (bv, bd) = _share(fast), _share(slow)
        where = "" if converged else " (a run short of the bar: its whole training time)"
        speed = _compared(FACTORISED, "seconds to the bar", where, (f, lora), (av, bv),
                          (ad, bd), lower=True, seeds=n, share=False)  # fmt: skip
        verdict = _censored(speed.verdict, a=a_short, b=b_short)
        needed = speed.seeds_needed if verdict == INCONCLUSIVE else None
        out.append(replace(speed, verdict=verdict, seeds_needed=needed))
    measured = [m for m in _PROBES if _measured([*mine, *theirs], m[0])]
    for measure, label, lower in [*_ACCURACY, *measured]:
        (av, ad), (bv, bd) = _scored(mine, measure), _scored(theirs, measure)
        out.append(_compared(FACTORISED, label, " at strength 1.0", (f, lora), (av, bv),
                             (ad, bd), lower=lower, seeds=n, converged=converged))  # fmt: skip
    return out


def _regularity(
    evaluations: Sequence[Evaluation], lora: str, original: str, seeds: Sequence[int]
) -> list[Comparison]:
    """``lora`` against ``original`` (no preservation, no early stopping) on ``seeds`` (the
    main run's), where both have every one: spread, share at the bar, concept and
    paraphrases."""
    reg, none = _units(evaluations, lora, seeds), _units(evaluations, original, seeds)
    if not len(reg) == len(none) == len(seeds):
        return []
    n, names = len(seeds), (lora, original)
    out = []
    for measure, label in (("preservation", "preservation"), ("concept_rate", "concept shown")):
        (av, ad), (bv, bd) = _spread(reg, measure), _spread(none, measure)
        out.append(_compared(STABLE, f"spread of {label}", " at 1.0 (std over seeds)", names,
                             (av, bv), (ad, bd), lower=True, seeds=n))  # fmt: skip
    (av, ad), (bv, bd) = [_share([float(u.concept_rate <= BAR) for u in us]) for us in (reg, none)]
    out.append(_compared(STABLE, "share of seeds at the bar", " at 1.0", names, (av, bv), (ad, bd),
                         lower=False, seeds=n))  # fmt: skip
    # effective = erasing: the concept shown at the bar's strength
    said = [("concept_rate", "concept shown")]
    if _measured([*reg, *none], "paraphrase_rate"):
        said.append(("paraphrase_rate", "paraphrases shown"))
    for measure, label in said:
        (av, ad), (bv, bd) = _scored(reg, measure), _scored(none, measure)
        out.append(_compared(EFFECTIVE, label, " at strength 1.0", names, (av, bv), (ad, bd),
                             lower=True, seeds=n))  # fmt: skip
    return out


def claims(
    evaluations: Sequence[Evaluation],
    training: Sequence[TrainingRun],
    *,
    lora: str | None,
    factorised: Sequence[str],
    original: str | None,
) -> list[Comparison]:
    """Every comparison the run can make, on the main run's seeds: ``lora`` and
    ``factorised`` name the main rows of the families (``None``/empty when not trained),
    ``original`` LoRA without preservation or early stopping (``None`` without regularity
    runs)."""
    if lora is None:
        return []
    main = [t for t in training if t.role == "adapter"]
    out = [c for f in factorised for c in _factorised(evaluations, main, lora, f)]
    if original is not None:
        seeds = sorted({t.seed for t in main if t.method == lora})
        out += _regularity(evaluations, lora, original, seeds)
    return out


def _key(c: Comparison) -> str:
    """The measure's name without where it was measured (its margin's key)."""
    return next(k for k in MARGINS if c.measure.startswith(k))


def _part(c: Comparison) -> str:
    return f"{c.a} vs {c.b}, {c.measure}: {c.verdict}"


def summary(comparisons: Sequence[Comparison]) -> list[Verdict]:
    """One verdict per claim (rule in the module docstring), with the parts that decided it
    and, when inconclusive, the most seeds any undecided part needs."""
    out = []
    for claim in dict.fromkeys(c.claim for c in comparisons):
        mine = [c for c in comparisons if c.claim == claim]
        verdicts = {c.verdict for c in mine}
        seeds = max(c.seeds for c in mine)
        needed: int | None = None
        if REFUTED in verdicts:
            verdict, parts = REFUTED, [_part(c) for c in mine if c.verdict == REFUTED]
        elif NOT_CONVERGED in verdicts:
            verdict, parts = NOT_CONVERGED, [_part(c) for c in mine if c.verdict == NOT_CONVERGED]
        elif INCONCLUSIVE in verdicts:
            undecided = [c for c in mine if c.verdict == INCONCLUSIVE]
            verdict, parts = INCONCLUSIVE, [_part(c) for c in undecided]
            counts = [c.seeds_needed for c in undecided]
            needed = None if None in counts else max(n for n in counts if n is not None)
        elif verdicts == {SUPPORTED}:
            verdict, parts = SUPPORTED, [_part(c) for c in mine]
        elif verdicts == {EQUIVALENT}:
            verdict, parts = EQUIVALENT, [_part(c) for c in mine]
        else:  # better on some measures, the same on others: not better on every one
            verdict, parts = REFUTED, [_part(c) for c in mine if c.verdict == EQUIVALENT]
        margins = dict.fromkeys(f"{_key(c)} {c.margin_text}" for c in mine)
        out.append(Verdict(claim, verdict, parts, list(margins), seeds, needed))
    return out
