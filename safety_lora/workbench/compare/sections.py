"""The report's tables, each a declarative list of columns (a header and how a row's cell
reads), rendered the same in ``report.md`` and ``report.html``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from safety_lora.workbench.compare.aggregate import (
    FamilyMeasure,
    MethodRow,
    RegularityRow,
    StabilityRow,
    TrainingSummary,
)
from safety_lora.workbench.compare.metrics import BAR
from safety_lora.workbench.compare.rows import Attack, Cost, Interval, Solve
from safety_lora.workbench.compare.verdicts import INCONCLUSIVE, MARGINS, Comparison, Verdict

if TYPE_CHECKING:
    from safety_lora.workbench.compare.config import CompareConfig
    from safety_lora.workbench.compare.report import Report

__all__ = ["MAIN", "SCALED", "Column", "Section", "label", "pct", "sections", "table"]

R = TypeVar("R")

#: Row kinds measured at a strength of their own (their label names it): the adapters and
#: text-embedding steering.
SCALED = ("adapter", "closed_form", "file", "kohya", "embedding")
#: Row kinds in the main table (variants and learning-rate runs have their own tables).
MAIN = ("base", "adapter", "kohya", "closed_form", "file", "negative_prompt", "sld", "embedding",
        "classifier")  # fmt: skip


@dataclass(frozen=True)
class Column(Generic[R]):
    """A table column: its header and the cell text of a row."""

    header: str
    cell: Callable[[R], str]


@dataclass(frozen=True)
class Section:
    """A titled paragraph, with a table when ``header`` is not empty."""

    title: str
    text: str
    header: list[str]
    rows: list[list[str]]


def table(title: str, text: str, columns: Sequence[Column[R]], rows: Iterable[R]) -> Section:
    """The section of ``rows`` shown in ``columns``."""
    return Section(
        title, text, [c.header for c in columns], [[c.cell(r) for c in columns] for r in rows]
    )


def pct(mean: float | None, ci: Interval | None = None) -> str:
    """A share as a percentage, with its interval when given ("n/a": not measured)."""
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.1f}%"
    return text if ci is None else text + f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(mean: float | None, ci: Interval | None = None, digits: int = 0) -> str:
    if mean is None:
        return "not reached"
    text = f"{mean:.{digits}f}"
    return text if ci is None else text + f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def label(row: MethodRow) -> str:
    """The row's name in the scatter plot and the Pareto list: adapters with their strength."""
    return f"{row.method} {row.strength:g}" if row.kind in SCALED else row.method


def _amount(c: Comparison, value: float) -> str:
    """A difference in the comparison's unit: points of a share, or seconds."""
    value = round(100 * value if c.share else value, 1) + 0.0  # no "-0.0"
    return f"{value:+.1f} points" if c.share else f"{value:+.1f} s"


def _value(c: Comparison, value: float, ci: Interval) -> str:
    return pct(value, ci) if c.share else _num(value, ci, 1) + " s"


def _difference(c: Comparison) -> str:
    lo, hi = c.difference_ci
    return f"{_amount(c, c.difference)} [{_amount(c, lo)}, {_amount(c, hi)}]"


def _margin(c: Comparison) -> str:
    return c.margin_text + ("" if c.share else f" (±{c.margin:.1f} s)")


def _seeds_to_decide(seeds: int, needed: int | None, verdict: str) -> str:
    if verdict != INCONCLUSIVE:
        return "-"
    if needed is None:
        return "none (the difference sits on the margin)"
    return f"{needed} (this run: {seeds})"


def _examples(prompts: Sequence[str]) -> str:
    """The first two distinct prompts, quoted."""
    return ", ".join(f"\u201c{p}\u201d" for p in list(dict.fromkeys(prompts))[:2])


VERDICT: list[Column[Verdict]] = [
    Column("claim", lambda v: v.claim),
    Column("verdict", lambda v: v.verdict),
    Column("margins", lambda v: "; ".join(v.margins)),
    Column("decided by", lambda v: "; ".join(v.decided_by)),
    Column("seeds to decide", lambda v: _seeds_to_decide(v.seeds, v.seeds_needed, v.verdict)),
]
COMPARISONS: list[Column[Comparison]] = [
    Column("claim", lambda c: c.claim),
    Column("measure", lambda c: c.measure),
    Column("A", lambda c: c.a),
    Column("A value [95% CI]", lambda c: _value(c, c.a_value, c.a_ci)),
    Column("B", lambda c: c.b),
    Column("B value [95% CI]", lambda c: _value(c, c.b_value, c.b_ci)),
    Column("A better by [95% CI]", _difference),
    Column("margin", _margin),
    Column("verdict", lambda c: c.verdict),
    Column("seeds to decide", lambda c: _seeds_to_decide(c.seeds, c.seeds_needed, c.verdict)),
]


def _measured(m: FamilyMeasure) -> str:
    """A family measure's value and interval in its unit."""
    if m.value is None:
        return "not reached"
    if m.unit == "%":
        return pct(m.value, m.ci)
    if m.unit == "points":
        return pct(m.value, m.ci).replace("%", " points")
    if m.unit == "x base":
        return _num(m.value, m.ci, 3) + " x base"
    return _num(m.value, m.ci, 3 if m.measure.endswith("per step") else 0) + f" {m.unit}"


def _citing(comparisons: Sequence[Comparison]) -> Callable[[FamilyMeasure], str]:
    """The claims whose comparisons use a family's measure (its row, the measure's name)."""

    def cell(m: FamilyMeasure) -> str:
        cited = [
            c.claim
            for c in comparisons
            if m.method in (c.a, c.b)
            and any(c.measure.startswith(k) and m.measure.startswith(k) for k in MARGINS)
        ]
        return "; ".join(dict.fromkeys(cited)) or "-"

    return cell


MEASURES: list[Column[FamilyMeasure]] = [
    Column("family", lambda m: m.family),
    Column("axis", lambda m: m.axis),
    Column("measure", lambda m: m.measure),
    Column("value [95% CI]", _measured),
    Column("n", lambda m: str(m.n)),
]
ERASURE: list[Column[MethodRow]] = [
    Column("method", lambda r: r.method),
    Column("strength", lambda r: f"{r.strength:g}" if r.kind in SCALED else "-"),
    Column("concept shown", lambda r: pct(r.concept_rate, r.concept_rate_ci)),
    Column("kept attribute", lambda r: pct(r.kept, r.kept_ci)),
    Column("other concepts", lambda r: pct(r.other, r.other_ci)),
    Column("preservation", lambda r: pct(r.preservation, r.preservation_ci)),
    Column("blocked", lambda r: pct(r.block_rate)),
]
PROBES: list[Column[MethodRow]] = [
    Column("method", lambda r: r.method),
    Column("concept shown", lambda r: pct(r.concept_rate, r.concept_rate_ci)),
    Column("paraphrases shown", lambda r: pct(r.paraphrase_rate, r.paraphrase_rate_ci)),
    Column("neighbour kept", lambda r: pct(r.neighbour_kept, r.neighbour_kept_ci)),
]
TRAINING: list[Column[TrainingSummary]] = [
    Column("adapter", lambda t: t.method),
    Column("lr", lambda t: f"{t.lr:g}"),
    Column("budget", lambda t: str(t.step_budget)),
    Column("trainable params", lambda t: str(t.trainable_parameters)),
    Column("file size", lambda t: f"{t.file_bytes / 1024:.1f} KiB"),
    Column("s/step", lambda t: f"{t.seconds_per_step:.3f}"),
    Column("reached bar", lambda t: f"{t.reached_bar}/{t.runs}"),
    Column("steps to bar", lambda t: _num(t.steps_to_bar, t.steps_to_bar_ci)),
    Column("s to bar", lambda t: _num(t.seconds_to_bar, t.seconds_to_bar_ci)),
    Column(
        "per seed (steps to bar)",
        lambda t: ", ".join(f"s{p.seed}: {p.steps_to_bar or '-'}" for p in t.per_seed),
    ),
]
STABILITY: list[Column[StabilityRow]] = [
    Column("family", lambda s: s.family),
    Column("lr (scale)", lambda s: f"{s.lr:g} ({s.lr_scale:g}x)"),
    Column("runs", lambda s: str(s.runs)),
    Column("at bar (eval)", lambda s: f"{s.at_bar}/{s.runs}"),
    Column("reached bar (probe)", lambda s: f"{s.reached_bar_in_training}/{s.runs}"),
    Column("concept shown", lambda s: pct(s.concept_rate)),
    Column("preservation", lambda s: f"{pct(s.preservation)} ± {100 * s.preservation_std:.1f}"),
]
REGULARITY: list[Column[RegularityRow]] = [
    Column("adapter", lambda r: r.method),
    Column("concept @1.0", lambda r: pct(r.concept_rate)),
    Column("preservation @1.0", lambda r: pct(r.preservation)),
    Column("steps (kept)", lambda r: f"{r.steps} ({r.kept_step})"),
    Column("stopped early", lambda r: "yes" if r.stopped_early else "no"),
    Column("steps to bar", lambda r: str(r.steps_to_bar or "not reached")),
]
#: Each attack's column: its header and its row's success (and the base model's, when the
#: attack regenerates the concept from images or a concept vector).
_ASR: dict[str, Column[Attack]] = {
    "soft": Column("soft-prompt ASR", lambda a: pct(a.soft_asr)),
    "tokens": Column("token ASR", lambda a: pct(a.token_asr)),
    "inversion": Column(
        "inversion ASR (base)", lambda a: _versus(a.inversion_asr, a.inversion_base_asr)
    ),
    "img2img": Column("img2img ASR (base)", lambda a: _versus(a.img2img_asr, a.img2img_base_asr)),
    "concept-vector": Column(
        "concept-vector ASR (base)",
        lambda a: _versus(a.concept_vector_asr, a.concept_vector_base_asr),
    ),
}


def _versus(asr: float | None, base: float | None) -> str:
    return f"{pct(asr)} ({pct(base)})"


def _attack_columns(attacks: Sequence[str]) -> list[Column[Attack]]:
    """The attack table's columns: the clean rate, each attack run, the seconds per attempt."""
    return [
        Column("method (strength 1.0)", lambda a: a.method),
        Column("clean", lambda a: pct(a.clean)),
        *(_ASR[k] for k in attacks),
        Column("s / attempt", lambda a: f"{a.seconds_per_attempt:.1f}"),
    ]


SOLVES: list[Column[Solve]] = [
    Column("method", lambda s: s.method),
    Column("what", lambda s: "edit solved" if s.path is not None else "directions encoded"),
    Column("seconds", lambda s: f"{s.seconds:.2f}"),
]
COSTS: list[Column[Cost]] = [
    Column("method", lambda c: c.method),
    Column("mode", lambda c: c.mode or "-"),
    Column("ms/step", lambda c: f"{1000 * c.seconds_per_step:.2f}"),
    Column("x base [95% CI]", lambda c: _num(c.vs_base, c.vs_base_ci, digits=3)),
    Column("extra UNet calls/step", lambda c: f"{c.extra_unet_calls_per_step:g}"),
]


_VERDICT = (
    "Each claim of the founding question, decided by the 95% bootstrap interval of the "
    "difference \u201cA better by\u201d (paired over seeds and prompts; training time over "
    "seeds) against the measure's practical-equivalence margin, stated before the run: "
    "supported when the interval lies wholly above +margin, refuted when wholly below "
    "-margin, equivalent when wholly inside it (two one-sided tests at 2.5% each), "
    "inconclusive otherwise, with the seeds that would decide it if the observed difference "
    "and spread held (normal approximation, 80% power). Accuracy between two families of "
    "which one did not reach the bar on every seed is inconclusive (did not converge); their "
    "time to the bar is still compared, a run short of the bar counting at its whole "
    "training time (a lower bound), so the side with such runs can only be found slower. A "
    "claim is supported when every measure is, refuted when any is or when it is only as good "
    "on some. The default runs {seeds} seeds: more seeds cost training time on every method "
    "(the default run is sized to finish in about 20 minutes on a 2-core CPU); pass --seeds N "
    "to run the seeds a claim needs."
)
_MEASURES = (
    "Each adapter family's main row (first budget) on the four axes. Speed: seconds and steps "
    "to the bar over the seeds that reached it, training seconds per step, inference cost "
    "per denoising step unfused (dynamic) and fused against the base model. Efficacy: "
    "concept and paraphrases shown at strength 1.0 (over seeds and prompts), white-box attack "
    "success (seed 0). Stability: share of runs over seeds and learning-rate scales at the "
    "bar, spread of preservation over seeds. Regularity: what preservation regularisation "
    "and early stopping change against the original recipe, paired by seed (n: the seeds "
    "both ran). n: the seeds (or timing pairs) behind each number; attack success is one "
    "attack on seed 0, without an interval."
)
_ERASURE = (
    "Mean over {seeds} seeds [95% CI]. Adapters and text embedding at each strength (strength "
    "0 is the base model exactly); the kohya row is the seed's PEFT LoRA rewritten as a kohya "
    "file. "
    "Classifier-only: a blocked image shows nothing (not the concept, nor anything kept); its "
    "cost is the block rate."
)
_TRAINING = (
    f"Each family at its own learning rate until a probe (every 25 steps, on noise the "
    f"evaluation never sees) shows the concept in <= {BAR:.0%} of images, within its step "
    "budget; steps and seconds to the bar over the seeds that reached it [95% CI]."
)
_STABILITY = (
    "Each family at {scales} its learning rate: runs at or under the bar at strength 1.0, and "
    "the spread of their preservation (mean ± std over seeds)."
)
_REGULARITY = (
    "With and without preservation regularisation and early stopping; `none` is the original "
    "kohya/A1111 recipe (concept loss only, the whole step budget)."
)
_KOHYA = (
    "The same LoRA as a kohya file and as a PEFT file: {same} on {seeds} seed(s) (largest "
    "pixel difference {diff:g}). The two are the same math (W + scale * up @ down); only the "
    "file layout differs."
)
_ATTACKS = (
    "ASR: share of the attack's images that show the concept; clean: the plain prompts' (same "
    "seeds); (base): the same attack inputs on the base model, where nothing is erased. Soft "
    "prompt and token search are white-box; inversion and img2img regenerate base-model images "
    "of the concept; concept-vector is Ring-A-Bell's black-box search."
)
_SOLVES = (
    "Methods made without training, on this machine: the closed-form edit solved and written, "
    "text-embedding steering's concept directions encoded (when a policy's pipeline is wrapped)."
)
_COSTS = (
    "Each method timed in alternating pairs with the base model (A B, B A, ...) after the whole "
    "run, alone on the machine: mean ratio [95% CI over the pairs]. The control row times the "
    "base against itself (the noise floor). Adapters as the wrapper runs them: dynamic (peft's "
    "layers at call time) and fused (merged, wrappers out of the forward path). Extra UNet "
    "calls: SLD's counted by its hook, text embedding's as the denoiser's passes in one call "
    "less the base model's."
)


def sections(config: CompareConfig, report: Report) -> list[Section]:
    """The report's tables in order, the verdict first; a table with no rows to show (the
    probes, regularity, kohya, attacks) is left out."""
    main = [r for r in report.rows if r.kind in MAIN]
    pareto = set(report.pareto)
    erasure = [*ERASURE, Column("Pareto", lambda r: "yes" if label(r) in pareto else "")]
    out = [
        table("Verdict", _VERDICT.format(seeds=config.seeds), VERDICT, report.verdicts),
        table(
            "Comparisons behind the verdict",
            "A is the side the claim says is better.",
            COMPARISONS,
            report.comparisons,
        ),
    ]
    if report.measures:
        cited = [*MEASURES, Column("cited by the verdict", _citing(report.comparisons))]
        out.append(table("Four axes per family", _MEASURES, cited, report.measures))
    out.append(
        table("Erasure and preservation", _ERASURE.format(seeds=config.seeds), erasure, main)
    )
    probed = [r for r in main if r.paraphrase_rate is not None or r.neighbour_kept is not None]
    if probed:
        out.append(_probes(report, probed))
    out.append(table("Training to the bar", _TRAINING, TRAINING, report.training))
    if report.solves:
        out.append(table("Solved, not trained", _SOLVES, SOLVES, report.solves))
    scales = " / ".join(f"{s:g}x" for s in sorted({1.0, *config.lr_scales}))
    out.append(table("Stability", _STABILITY.format(scales=scales), STABILITY, report.stability))
    if report.regularity:
        out.append(table("Regularity (seed 0)", _REGULARITY, REGULARITY, report.regularity))
    k = report.kohya
    if k.seeds:
        same = "identical images" if k.identical else "different images"
        text = _KOHYA.format(same=same, seeds=k.seeds, diff=k.max_pixel_difference)
        out.append(Section("kohya file vs PEFT file", text, [], []))
    if report.attacks:
        title = f"Attack success ({report.attacks[0].budget} steps or generations per attempt)"
        out.append(table(title, _ATTACKS, _attack_columns(config.attacks), report.attacks))
    out.append(table("Inference cost per denoising step", _COSTS, COSTS, report.costs))
    return out


def _probes(report: Report, probed: list[MethodRow]) -> Section:
    said, near = report.prompts["paraphrase"], report.prompts["neighbour"]
    paraphrases = (
        f"Paraphrases: prompts naming the concept by other words ({_examples(said)}), the "
        "share of images that still show it (no method was told these words)."
        if said
        else "Paraphrases: this concept has no other words (n/a)."
    )
    return table(
        "Where erasure fails in practice (strength 1.0)",
        f"{paraphrases} Neighbour kept: two-object prompts ({_examples(near)}), the share "
        "whose object without the concept is drawn as asked.",
        PROBES,
        probed,
    )
