"""Aggregate a compare run's units into ``report.json``, ``report.md``, ``report.html``, plots
and image grids.

Every number is computed once, into ``report.json``'s data; the Markdown and the HTML
report render the same tables from it (:func:`sections`), the HTML one self-contained (its
images inline), the verdict table first.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from safety_lora.workbench.compare.metrics import (
    BAR,
    bootstrap,
    mean_interval,
    mean_std,
    pareto_front,
)
from safety_lora.workbench.compare.plots import (
    cost_bars,
    grid,
    scatter,
    stability_plot,
    strength_curves,
)
from safety_lora.workbench.compare.state import slug
from safety_lora.workbench.compare.verdicts import claims, summary

if TYPE_CHECKING:
    from safety_lora.workbench.compare.config import CompareConfig
    from safety_lora.workbench.compare.metrics import PromptSet

__all__ = ["aggregate", "sections", "write_report"]

_PROBES = ("paraphrase_rate", "neighbour_kept")
_CI = ("concept_rate", "erasure", "kept", "other", "preservation", *_PROBES)
_KEYS = (*_CI, "block_rate")
#: Row kinds in the main table (variants and learning-rate runs have their own tables).
_MAIN = ("base", "adapter", "kohya", "closed_form", "file", "negative_prompt", "sld", "classifier")


def aggregate(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, strength): mean and std over seeds of every score, and a 95%
    bootstrap interval (over seeds and prompts) of each rate."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for e in evaluations:
        groups[(e["method"], float(e["strength"]))].append(e)
    rows = []
    for (method, strength), units in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "kind": units[0]["kind"],
            "family": units[0].get("family"),
            "strength": strength,
            "seeds": len(units),
        }
        for key in _KEYS:
            values = [u[key] for u in units if u.get(key) is not None]
            mean, std = mean_std(values) if values else (None, None)
            row[key], row[key + "_std"] = mean, std
            if key in _CI:
                row[key + "_ci"] = list(bootstrap(units, key)) if values else None
        rows.append(row)
    return rows


def _pct(mean: float | None, ci: Sequence[float] | None = None) -> str:
    if mean is None:
        return "n/a"
    text = f"{100 * mean:.1f}%"
    return text if ci is None else text + f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _num(mean: float | None, ci: Sequence[float] | None = None, digits: int = 0) -> str:
    if mean is None:
        return "not reached"
    text = f"{mean:.{digits}f}"
    return text if ci is None else text + f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _training(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per main adapter method: cost and steps to the bar over seeds, with intervals."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for u in units:
        if u["role"] == "adapter":
            groups[u["method"]].append(u)
    out = []
    for method, runs in groups.items():
        reached = [r for r in runs if r["reached_bar"]]
        row: dict[str, Any] = {
            "method": method,
            "family": runs[0]["family"],
            "rank": runs[0]["rank"],
            "lr": runs[0]["lr"],
            "step_budget": runs[0]["step_budget"],
            "trainable_parameters": runs[0]["trainable_parameters"],
            "file_bytes": runs[0]["file_bytes"],
            "seconds_per_step": mean_std([r["seconds_per_step"] for r in runs])[0],
            "reached_bar": len(reached),
            "runs": len(runs),
            "per_seed": [
                {
                    "seed": r["seed"],
                    "steps_to_bar": r["steps_to_bar"],
                    "seconds_to_bar": r["seconds_to_bar"],
                    "steps": r["steps"],
                }
                for r in runs
            ],
        }
        for key in ("steps_to_bar", "seconds_to_bar"):
            values = [float(r[key]) for r in reached]
            row[key] = mean_std(values)[0] if values else None
            row[key + "_ci"] = list(mean_interval(values)) if values else None
        out.append(row)
    return out


def _stability(evaluations: list[dict[str, Any]], training: list[dict[str, Any]]) -> list[Any]:
    """Per family and learning-rate scale: runs, share at the bar, preservation spread."""
    at_one = {(e["method"], e["seed"]): e for e in evaluations if float(e["strength"]) == 1.0}
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for t in training:
        if t["role"] in ("adapter", "stability") and t["budget"] == training[0]["budget"]:
            groups[(t["family"], float(t["lr_scale"]))].append(t)
    out = []
    for (family, scale), runs in sorted(groups.items()):
        units = [at_one[(t["method"], t["seed"])] for t in runs]
        preservation = [u["preservation"] for u in units]
        concept = [u["concept_rate"] for u in units]
        mean, std = mean_std(preservation)
        out.append(
            {
                "family": family,
                "lr_scale": scale,
                "lr": runs[0]["lr"],
                "runs": len(runs),
                "at_bar": sum(c <= BAR for c in concept),
                "reached_bar_in_training": sum(bool(t["reached_bar"]) for t in runs),
                "concept_rate": mean_std(concept)[0],
                "preservation": mean,
                "preservation_std": std,
                "points": [
                    {"seed": t["seed"], "concept_rate": c, "preservation": p}
                    for t, c, p in zip(runs, concept, preservation, strict=True)
                ],
            }
        )
    return out


def _regularity(evaluations: list[dict[str, Any]], training: list[dict[str, Any]]) -> list[Any]:
    """Per family, seed 0: each variant at strength 1.0 (the main run is ``reg``)."""
    at_one = {(e["method"], e["seed"]): e for e in evaluations if float(e["strength"]) == 1.0}
    out = []
    for t in training:
        if t["seed"] == 0 and t["role"] in ("adapter", "variant"):
            u = at_one[(t["method"], 0)]
            out.append(
                {
                    "family": t["family"],
                    "method": t["method"],
                    "variant": t["variant"],
                    "concept_rate": u["concept_rate"],
                    "preservation": u["preservation"],
                    "steps": t["steps"],
                    "kept_step": t["kept_step"],
                    "stopped_early": t["stopped_early"],
                    "steps_to_bar": t["steps_to_bar"],
                }
            )
    order = {"reg": 0, "no-preserve": 1, "no-early-stop": 2, "none": 3}
    return sorted(out, key=lambda r: (r["family"], order[r["variant"]]))


def _names(config: CompareConfig, training: list[dict[str, Any]]) -> dict[str, Any]:
    """The main rows' names the claims compare."""
    first = [t for t in training if t["seed"] == 0 and t["budget"] == config.ranks[0]]
    main = {t["family"]: t["method"] for t in first if t["role"] == "adapter"}
    none = [t["method"] for t in first if t["family"] == "lora" and t["variant"] == "none"]
    return {
        "lora": main.get("lora"),
        "factorised": [main[f] for f in ("loha", "lokr") if f in main],
        "original": none[0] if none else None,
    }


def write_report(
    config: CompareConfig, results: dict[str, Any], prompts: PromptSet
) -> dict[str, Any]:
    """Write report.json, report.md, report.html, the plots and grids into ``config.out``;
    return the data."""
    out = config.out
    evaluations = [*results["evaluations"], *results["kohya"]]
    rows = aggregate(evaluations)
    base = next(r for r in rows if r["kind"] == "base")
    points = [
        {
            **r,
            "label": f"{r['method']} {r['strength']:g}" if r["kind"] in _ADAPTERS else r["method"],
        }
        for r in rows
        if r["kind"] in _MAIN and r["kind"] != "kohya"
    ]
    front = pareto_front([(p["erasure"], p["preservation"]) for p in points])
    for i, p in enumerate(points):
        p["pareto"] = i in front
    comparisons = claims(
        evaluations,
        results["training"],
        stability_seeds=config.stability_seeds,
        **_names(config, results["training"]),
    )
    kohya = results["kohya"]
    data: dict[str, Any] = {
        "config": config.model_dump(mode="json"),
        "prompts": {
            "target": list(prompts.target),
            "other": list(prompts.other),
            "paraphrase": list(prompts.paraphrase),
            "neighbour": list(prompts.neighbour),
        },
        "bar": BAR,
        "verdicts": summary(comparisons),
        "comparisons": [c.to_json() for c in comparisons],
        "rows": rows,
        "pareto": [p["label"] for p in points if p["pareto"]],
        "training": _training(results["training"]),
        "training_runs": results["training"],
        "stability": _stability(results["evaluations"], results["training"]),
        "regularity": _regularity(results["evaluations"], results["training"]),
        "kohya": {
            "seeds": len(kohya),
            "identical": all(k["identical"] for k in kohya) if kohya else None,
            "max_pixel_difference": max((k["max_pixel_difference"] for k in kohya), default=None),
        },
        "closed_form": results["solves"],
        "costs": results["costs"],
        "attacks": results["attacks"],
    }
    data["reading"] = _reading(data, base)
    data["files"] = _figures(config, data, points, front)
    text = json.dumps(data, indent=1)
    (out / "report.json").write_text(text)
    loaded: dict[str, Any] = json.loads(text)  # what report.json holds, tuples as lists
    from safety_lora.workbench.compare.html import html_report

    (out / "report.md").write_text(_markdown(config, loaded))
    (out / "report.html").write_text(html_report(config, loaded, sections(config, loaded)))
    return loaded


_ADAPTERS = ("adapter", "closed_form", "file", "kohya")


def _figures(
    config: CompareConfig, data: dict[str, Any], points: list[dict[str, Any]], front: list[int]
) -> dict[str, Any]:
    out = config.out
    files: dict[str, Any] = {"scatter": "erasure_vs_preservation.png"}
    files.update(curves="strength_curves.png", costs="cost_bars.png", stability="stability.png")
    scatter(points, front, out / files["scatter"])
    base = next(r for r in data["rows"] if r["kind"] == "base")
    curves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in data["rows"]:
        if r["kind"] in ("adapter", "closed_form", "file"):
            curves[r["method"]].append(r)
    strength_curves(
        {
            k: [{**base, "strength": 0.0}, *sorted(v, key=lambda r: r["strength"])]
            for k, v in curves.items()
        },
        out / files["curves"],
    )
    cost_bars(data["costs"], out / files["costs"])
    stability_plot(data["stability"], out / files["stability"])
    grids = {}
    for method in dict.fromkeys(r["method"] for r in data["rows"]):
        folder = out / "images" / slug(method)
        strips = sorted(folder.glob("*.png"), key=lambda p: float(p.stem))
        if strips:
            name = f"grid_{slug(method)}.png"
            grid([(f"{method} {p.stem}", p) for p in strips], out / name)
            grids[method] = name
    return {**files, "grids": grids}


def _reading(data: dict[str, Any], base: dict[str, Any]) -> str:
    """One paragraph saying what the numbers say."""
    rows = data["rows"]
    at_one = [r for r in rows if r["kind"] in _ADAPTERS and r["strength"] == 1.0]
    free = [r for r in rows if r["kind"] in ("negative_prompt", "sld", "classifier")]
    passing = [r for r in [*at_one, *free] if r["concept_rate_ci"][1] <= BAR]
    parts = [
        f"The base model shows the concept in {_pct(base['concept_rate'])} of images asked for "
        f"it (preservation {_pct(base['preservation'])})."
    ]
    if passing:
        best = max(passing, key=lambda r: r["preservation"])
        ties = [
            r["method"]
            for r in passing
            if r is not best and r["preservation_ci"][1] >= best["preservation_ci"][0]
        ]
        parts.append(
            f"Of the methods whose whole interval is under the bar (concept shown <= {BAR:.0%}), "
            f"{best['method']} keeps the most: preservation "
            f"{_pct(best['preservation'], best['preservation_ci'])}"
            + (f", no measurable difference from {', '.join(ties)}." if ties else ".")
        )
    else:
        parts.append(f"No method's interval lies under the bar (concept shown <= {BAR:.0%}).")
    for v in data["verdicts"]:
        parts.append(f"Claim \u201c{v['claim']}\u201d: {v['verdict']}.")
    return " ".join(parts)


# -- tables -------------------------------------------------------------------------------


def sections(config: CompareConfig, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's tables in order: ``{"title", "text", "header", "rows"}`` (strings)."""
    out: list[dict[str, Any]] = []

    def add(title: str, text: str, header: list[str], rows: list[list[str]]) -> None:
        out.append({"title": title, "text": text, "header": header, "rows": rows})

    add(
        "Verdict",
        "Each claim of the founding question, decided by 95% bootstrap intervals (over seeds "
        "and prompts; training time over seeds): supported or refuted only when the intervals "
        "do not overlap.",
        ["claim", "verdict", "decided by"],
        [
            [v["claim"], v["verdict"], "; ".join(v["decided_by"]) or "intervals overlap"]
            for v in data["verdicts"]
        ],
    )
    digits = {"training seconds to the bar": 0}
    add(
        "Comparisons behind the verdict",
        "A is the side the claim says is better.",
        ["claim", "measure", "A", "A value [95% CI]", "B", "B value [95% CI]", "verdict"],
        [
            [
                c["claim"],
                c["measure"],
                c["a"],
                _value(c["measure"], c["a_value"], c["a_ci"], digits),
                c["b"],
                _value(c["measure"], c["b_value"], c["b_ci"], digits),
                c["verdict"],
            ]
            for c in data["comparisons"]
        ],
    )
    main = [r for r in data["rows"] if r["kind"] in _MAIN]
    add(
        "Erasure and preservation",
        f"Mean over {config.seeds} seeds [95% CI]. Adapters at each strength (strength 0 is the "
        "base model exactly); the kohya row is the seed's PEFT LoRA rewritten as a kohya "
        "file. Classifier-only: a blocked image shows nothing (not the concept, nor anything "
        "kept); its cost is the block rate.",
        [
            "method",
            "strength",
            "concept shown",
            "kept attribute",
            "other concepts",
            "preservation",
            "blocked",
            "Pareto",
        ],
        [
            [
                r["method"],
                f"{r['strength']:g}" if r["kind"] in _ADAPTERS else "-",
                _pct(r["concept_rate"], r["concept_rate_ci"]),
                _pct(r["kept"], r["kept_ci"]),
                _pct(r["other"], r["other_ci"]),
                _pct(r["preservation"], r["preservation_ci"]),
                _pct(r["block_rate"]),
                "yes" if _label(r) in data["pareto"] else "",
            ]
            for r in main
        ],
    )
    probed = [
        r for r in main if r["paraphrase_rate"] is not None or r["neighbour_kept"] is not None
    ]
    if probed:
        said, near = data["prompts"]["paraphrase"], data["prompts"]["neighbour"]
        paraphrases = (
            f"Paraphrases: prompts naming the concept by other words ({_examples(said)}), the "
            "share of images that still show it (no method was told these words)."
            if said
            else "Paraphrases: this concept has no other words (n/a)."
        )
        add(
            "Where erasure fails in practice (strength 1.0)",
            f"{paraphrases} Neighbour kept: two-object prompts ({_examples(near)}), the share "
            "whose object without the concept is drawn as asked.",
            ["method", "concept shown", "paraphrases shown", "neighbour kept"],
            [
                [
                    r["method"],
                    _pct(r["concept_rate"], r["concept_rate_ci"]),
                    _pct(r["paraphrase_rate"], r["paraphrase_rate_ci"]),
                    _pct(r["neighbour_kept"], r["neighbour_kept_ci"]),
                ]
                for r in probed
            ],
        )
    add(
        "Training to the bar",
        f"Each family at its own learning rate until a probe (every 25 steps, on noise the "
        f"evaluation never sees) shows the concept in <= {BAR:.0%} of images, within its step "
        "budget; steps and seconds to the bar over the seeds that reached it [95% CI].",
        [
            "adapter",
            "lr",
            "budget",
            "trainable params",
            "file size",
            "s/step",
            "reached bar",
            "steps to bar",
            "s to bar",
            "per seed (steps to bar)",
        ],
        [
            [
                t["method"],
                f"{t['lr']:g}",
                str(t["step_budget"]),
                str(t["trainable_parameters"]),
                f"{t['file_bytes'] / 1024:.1f} KiB",
                f"{t['seconds_per_step']:.3f}",
                f"{t['reached_bar']}/{t['runs']}",
                _num(t["steps_to_bar"], t["steps_to_bar_ci"]),
                _num(t["seconds_to_bar"], t["seconds_to_bar_ci"]),
                ", ".join(f"s{p['seed']}: {p['steps_to_bar'] or '-'}" for p in t["per_seed"]),
            ]
            for t in data["training"]
        ],
    )
    add(
        "Stability",
        "Each family at 0.5x / 1x / 2x its learning rate: runs at or under the bar at strength "
        "1.0, and the spread of their preservation (mean ± std over seeds).",
        [
            "family",
            "lr (scale)",
            "runs",
            "at bar (eval)",
            "reached bar (probe)",
            "concept shown",
            "preservation",
        ],
        [
            [
                s["family"],
                f"{s['lr']:g} ({s['lr_scale']:g}x)",
                str(s["runs"]),
                f"{s['at_bar']}/{s['runs']}",
                f"{s['reached_bar_in_training']}/{s['runs']}",
                _pct(s["concept_rate"]),
                f"{_pct(s['preservation'])} ± {100 * s['preservation_std']:.1f}",
            ]
            for s in data["stability"]
        ],
    )
    if data["regularity"]:
        add(
            "Regularity (seed 0)",
            "With and without preservation regularisation and early stopping; `none` is the "
            "original kohya/A1111 recipe (concept loss only, the whole step budget).",
            [
                "adapter",
                "concept @1.0",
                "preservation @1.0",
                "steps (kept)",
                "stopped early",
                "steps to bar",
            ],
            [
                [
                    r["method"],
                    _pct(r["concept_rate"]),
                    _pct(r["preservation"]),
                    f"{r['steps']} ({r['kept_step']})",
                    "yes" if r["stopped_early"] else "no",
                    str(r["steps_to_bar"] or "not reached"),
                ]
                for r in data["regularity"]
            ],
        )
    k = data["kohya"]
    if k["seeds"]:
        same = "identical images" if k["identical"] else "different images"
        add(
            "kohya file vs PEFT file",
            f"The same LoRA as a kohya file and as a PEFT file: {same} on {k['seeds']} seed(s) "
            f"(largest pixel difference {k['max_pixel_difference']:g}). The two are the same "
            "math (W + scale * up @ down); only the file layout differs.",
            [],
            [],
        )
    if data["attacks"]:
        add(
            f"Attack success (white-box, {data['attacks'][0]['budget']} steps per attempt)",
            "ASR: share of the attack's images that show the concept; clean: the plain "
            "prompts' (same seeds).",
            ["method (strength 1.0)", "clean", "soft-prompt ASR", "token ASR", "s / attempt"],
            [
                [
                    a["method"],
                    _pct(a["clean"]),
                    _pct(a["soft_asr"]),
                    _pct(a["token_asr"]),
                    f"{a['seconds_per_attempt']:.1f}",
                ]
                for a in data["attacks"]
            ],
        )
    add(
        "Inference cost per denoising step",
        "Each method timed in alternating pairs with the base model (A B, B A, ...) after the "
        "whole run, alone on the machine: mean ratio [95% CI over the pairs]. The control row "
        "times the base against itself (the noise floor). Adapters as the wrapper runs them: "
        "dynamic (peft's layers at call time) and fused (merged, wrappers out of the forward "
        "path).",
        ["method", "mode", "ms/step", "x base [95% CI]", "extra UNet calls/step"],
        [
            [
                c["method"],
                c["mode"] or "-",
                f"{1000 * c['seconds_per_step']:.2f}",
                _num(c["vs_base"], c["vs_base_ci"], digits=3),
                f"{c.get('extra_unet_calls_per_step', 0):g}",
            ]
            for c in data["costs"]
        ],
    )
    return out


def _examples(prompts: Sequence[str]) -> str:
    """The first two distinct prompts, quoted."""
    return ", ".join(f"\u201c{p}\u201d" for p in list(dict.fromkeys(prompts))[:2])


def _label(row: dict[str, Any]) -> str:
    return f"{row['method']} {row['strength']:g}" if row["kind"] in _ADAPTERS else row["method"]


def _value(measure: str, value: float, ci: Sequence[float], digits: dict[str, int]) -> str:
    if measure in digits:
        return _num(value, ci, digits[measure])
    return _pct(value, ci)


def _markdown(config: CompareConfig, data: dict[str, Any]) -> str:
    model = config.base or "concept world (bundled)"
    lines = [f"# Compare: erasing `{config.erase}` on {model}", "", data["reading"], ""]
    lines.append(
        f"{len(data['prompts']['target'])} prompts ask for the concept, "
        f"{len(data['prompts']['other'])} for other concepts, "
        f"{len(data['prompts']['paraphrase'])} name it by other words and "
        f"{len(data['prompts']['neighbour'])} set it beside another object; {config.seeds} seed(s) "
        "(training seed for adapters, sampling seed for all)."
    )
    for s in sections(config, data):
        lines += ["", f"## {s['title']}", "", s["text"]]
        if s["header"]:
            lines += ["", "| " + " | ".join(s["header"]) + " |", "|" + "---|" * len(s["header"])]
            lines += ["| " + " | ".join(r) + " |" for r in s["rows"]]
    lines += ["", "## Figures", ""]
    lines += [f"![{k}]({v})" for k, v in data["files"].items() if str(v).endswith(".png")]
    lines += [f"- {m}: [{g}]({g})" for m, g in data["files"]["grids"].items()]
    return "\n".join(lines) + "\n"
