"""Aggregate a compare run's units into ``report.json``, ``report.md``, ``report.html``, plots
and image grids.

Every number is computed once, into :class:`Report` (``report.json``); the Markdown and the
HTML report render the same tables from it (:mod:`~safety_lora.workbench.compare.sections`),
the HTML one self-contained (its images inline), the verdict table first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from safety_lora.workbench.compare.aggregate import (
    FamilyMeasure,
    KohyaSummary,
    MethodRow,
    RegularityRow,
    StabilityRow,
    TrainingSummary,
    family_measures,
    kohya_summary,
    method_rows,
    regularity,
    stability,
    training_summaries,
)
from safety_lora.workbench.compare.metrics import BAR, overlap, pareto_front
from safety_lora.workbench.compare.plots import (
    cost_bars,
    forest,
    grid,
    scatter,
    stability_plot,
    strength_curves,
)
from safety_lora.workbench.compare.rows import Attack, Cost, Results, Row, Solve, TrainingRun
from safety_lora.workbench.compare.sections import MAIN, SCALED, label, pct, sections
from safety_lora.workbench.compare.state import slug
from safety_lora.workbench.compare.verdicts import (
    EQUIVALENT,
    INCONCLUSIVE,
    NOT_CONVERGED,
    REFUTED,
    SUPPORTED,
    Comparison,
    Verdict,
    claims,
    summary,
)

if TYPE_CHECKING:
    from safety_lora.workbench.compare.config import CompareConfig
    from safety_lora.workbench.compare.metrics import PromptSet

__all__ = ["SMOKE", "Figures", "Report", "write_report"]

#: What a ``--quick`` report says above its verdicts.
SMOKE = (
    "Smoke test (--quick): few seeds, prompts and training steps. Its verdicts check that the "
    "code runs end to end; they decide nothing. Run without --quick for the answer."
)


class Figures(Row):
    """The report's PNG files (in ``out``), and each method's image grid."""

    scatter: str = "erasure_vs_preservation.png"
    forest: str = "verdict_forest.png"
    curves: str = "strength_curves.png"
    costs: str = "cost_bars.png"
    stability: str = "stability.png"
    grids: dict[str, str]


class Report(Row):
    """``report.json``: every number of the run, computed once; the tables render from it."""

    config: dict[str, Any]
    prompts: dict[str, list[str]]
    bar: float
    verdicts: list[Verdict]
    comparisons: list[Comparison]
    measures: list[FamilyMeasure]
    rows: list[MethodRow]
    pareto: list[str]
    training: list[TrainingSummary]
    training_runs: list[TrainingRun]
    stability: list[StabilityRow]
    regularity: list[RegularityRow]
    kohya: KohyaSummary
    solves: list[Solve]
    costs: list[Cost]
    attacks: list[Attack]
    reading: str
    files: Figures


def _names(config: CompareConfig, training: list[TrainingRun]) -> dict[str, Any]:
    """The main rows' names the claims compare."""
    first = [t for t in training if t.seed == 0 and t.budget == config.ranks[0]]
    main = {t.family: t.method for t in first if t.role == "adapter"}
    none = [t.method for t in first if t.family == "lora" and t.variant == "none"]
    return {
        "lora": main.get("lora"),
        "factorised": [main[f] for f in ("loha", "lokr") if f in main],
        "original": none[0] if none else None,
    }


def write_report(config: CompareConfig, results: Results, prompts: PromptSet) -> dict[str, Any]:
    """Write report.json, report.md, report.html, the plots and grids into ``config.out``;
    return report.json's data."""
    from safety_lora.workbench.compare.html import html_report

    out = config.out
    rows = method_rows([*results.evaluations, *results.kohya])
    points = [r for r in rows if r.kind in MAIN and r.kind != "kohya"]
    front = pareto_front([(p.erasure, p.preservation) for p in points])
    comparisons = claims(
        [*results.evaluations, *results.kohya],
        results.training,
        **_names(config, results.training),
    )
    verdicts = summary(comparisons)
    runs = stability(results.evaluations, results.training)
    report = Report(
        config=config.model_dump(mode="json"),
        prompts={
            "target": list(prompts.target),
            "other": list(prompts.other),
            "paraphrase": list(prompts.paraphrase),
            "neighbour": list(prompts.neighbour),
        },
        bar=BAR,
        verdicts=verdicts,
        comparisons=comparisons,
        measures=family_measures(
            rows, results.evaluations, results.training, results.costs, results.attacks
        ),
        rows=rows,
        pareto=[label(points[i]) for i in front],
        training=training_summaries(results.training),
        training_runs=results.training,
        stability=runs,
        regularity=regularity(results.evaluations, results.training),
        kohya=kohya_summary(results.kohya),
        solves=results.solves,
        costs=results.costs,
        attacks=results.attacks,
        reading=_reading(rows, verdicts, comparisons),
        files=_figures(config, rows, points, front, results.costs, runs, comparisons),
    )
    text = report.model_dump_json(indent=1)
    (out / "report.json").write_text(text)
    (out / "report.md").write_text(_markdown(config, report))
    (out / "report.html").write_text(html_report(config, report, sections(config, report)))
    data: dict[str, Any] = json.loads(text)
    return data


def _figures(
    config: CompareConfig,
    rows: list[MethodRow],
    points: list[MethodRow],
    front: list[int],
    costs: list[Cost],
    runs: list[StabilityRow],
    comparisons: list[Comparison],
) -> Figures:
    """Draw the plots and each method's grid of strips into ``config.out``."""
    out, files = config.out, Figures(grids={})
    forest([asdict(c) for c in comparisons], out / files.forest)
    scatter([p.model_dump() for p in points], front, out / files.scatter)
    base = next(r for r in rows if r.kind == "base").model_dump()
    curves: dict[str, list[MethodRow]] = defaultdict(list)
    for r in rows:
        if r.kind in SCALED and r.kind != "kohya":
            curves[r.method].append(r)
    strength_curves(
        {
            m: [{**base, "strength": 0.0}, *(r.model_dump() for r in sorted(v, key=_strength))]
            for m, v in curves.items()
        },
        out / files.curves,
    )
    cost_bars([c.model_dump() for c in costs], out / files.costs)
    stability_plot([s.model_dump() for s in runs], out / files.stability)
    grids = {}
    for method in dict.fromkeys(r.method for r in rows):
        folder = out / "images" / slug(method)
        strips = sorted(folder.glob("*.png"), key=lambda p: float(p.stem))
        if strips:
            name = f"grid_{slug(method)}.png"
            grid([(f"{method} {p.stem}", p) for p in strips], out / name)
            grids[method] = name
    return files.model_copy(update={"grids": grids})


def _strength(row: MethodRow) -> float:
    return row.strength


def _amount(c: Comparison, value: float) -> str:
    value = round(100 * value if c.share else value, 1) + 0.0  # no "-0.0"
    return f"{value:g} points" if c.share else f"{value:g} s"


def _said(c: Comparison) -> str:
    """One comparison in words: both values, the difference's interval and the margin."""

    def value(v: float) -> str:
        return f"{100 * v:.0f}%" if c.share else f"{v:.1f} s"

    lo, hi = c.difference_ci
    return (
        f"{c.measure}: {c.a} {value(c.a_value)} vs {c.b} {value(c.b_value)}, {c.a} better by "
        f"{_amount(c, c.difference)} [{_amount(c, lo)}, {_amount(c, hi)}] against a margin of "
        f"{_amount(c, c.margin)}"
    )


#: The founding question's claims as questions.
_QUESTIONS = {
    "the factorised family is faster and more accurate": "Are LoHa and LoKr faster and more "
    "accurate than LoRA?",
    "PEFT LoRA with regularisation and early stopping is more stable": "Is LoRA with "
    "regularisation and early stopping more stable than the original recipe?",
    "the original LoRA without regularisation is less effective": "Is the original recipe "
    "less effective?",
}
#: How each verdict answers its question.
_ANSWERS = {
    SUPPORTED: "Yes (supported)",
    REFUTED: "No (refuted)",
    EQUIVALENT: "No practical difference (equivalent)",
    INCONCLUSIVE: "Not decided (inconclusive)",
    NOT_CONVERGED: "Not decided: a family did not reach the bar on every seed (inconclusive)",
}


def _reading(rows: list[MethodRow], verdicts: list[Verdict], comparisons: list[Comparison]) -> str:
    """One paragraph answering the founding question in plain words from the numbers: the
    best method under the bar, then each claim with the comparison that decided it."""
    base = next(r for r in rows if r.kind == "base")
    at_one = [r for r in rows if r.kind in SCALED and r.strength == 1.0]
    free = [r for r in rows if r.kind in ("negative_prompt", "sld", "classifier")]
    passing = [r for r in [*at_one, *free] if r.concept_rate_ci[1] <= BAR]
    parts = [
        f"The base model shows the concept in {pct(base.concept_rate)} of images asked for "
        f"it (preservation {pct(base.preservation)})."
    ]
    if passing:
        best = max(passing, key=lambda r: r.preservation)
        ties = [
            r.method
            for r in passing
            if r is not best and overlap(r.preservation_ci, best.preservation_ci)
        ]
        parts.append(
            f"Of the methods whose whole interval is under the bar (concept shown <= {BAR:.0%}), "
            f"{best.method} keeps the most: preservation "
            f"{pct(best.preservation, best.preservation_ci)}"
            + (f"; the intervals of {', '.join(ties)} overlap it." if ties else ".")
        )
    else:
        parts.append(f"No method's interval lies under the bar (concept shown <= {BAR:.0%}).")
    for v in verdicts:
        mine = [c for c in comparisons if c.claim == v.claim]
        deciding = [c for c in mine if f"{c.a} vs {c.b}, {c.measure}: {c.verdict}" in v.decided_by]
        said = "; ".join(_said(c) for c in (deciding or mine)[:2])
        answer = _ANSWERS[v.verdict]
        if v.verdict == INCONCLUSIVE:
            answer += (
                f" on {v.seeds} seeds, {v.seeds_needed} would decide it"
                if v.seeds_needed
                else f" on {v.seeds} seeds, the difference sitting on the margin"
            )
        parts.append(f"{_QUESTIONS.get(v.claim, v.claim)} {answer}: {said}.")
    return " ".join(parts)


def _markdown(config: CompareConfig, report: Report) -> str:
    model = config.base or "concept world (bundled)"
    lines = [f"# Compare: erasing `{config.erase}` on {model}", ""]
    if config.smoke:
        lines += [f"> {SMOKE}", ""]
    n = {k: len(v) for k, v in report.prompts.items()}
    lines.append(
        f"{n['target']} prompts ask for the concept, {n['other']} for other concepts, "
        f"{n['paraphrase']} name it by other words and {n['neighbour']} set it beside another "
        f"object; {config.seeds} seed(s) (training seed for adapters, sampling seed for all)."
    )
    for i, s in enumerate(sections(config, report)):
        lines += ["", f"## {s.title}", "", s.text]
        if s.header:
            lines += ["", "| " + " | ".join(s.header) + " |", "|" + "---|" * len(s.header)]
            lines += ["| " + " | ".join(r) + " |" for r in s.rows]
        if i == 0:  # the verdict's forest plot and its answer in words
            lines += ["", f"![forest]({report.files.forest})", "", "## Answer", "", report.reading]
    files = report.files
    lines += ["", "## Figures", ""]
    lines += [f"![{k}]({v})" for k, v in files.model_dump(exclude={"grids", "forest"}).items()]
    lines += [f"- {m}: [{g}]({g})" for m, g in files.grids.items()]
    return "\n".join(lines) + "\n"
