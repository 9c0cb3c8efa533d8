"""Aggregate a compare run's units into ``report.json``, ``report.md``, plots and grids."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from safety_lora.compare.metrics import BAR, mean_std, pareto_front
from safety_lora.compare.plots import cost_bars, grid, scatter, strength_curves

if TYPE_CHECKING:
    from safety_lora.compare.config import CompareConfig
    from safety_lora.compare.metrics import PromptSet

__all__ = ["aggregate", "write_report"]

_KEYS = ("concept_rate", "erasure", "kept", "other", "preservation", "block_rate")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def aggregate(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, strength): mean and std over seeds of every score."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for e in evaluations:
        groups[(e["method"], float(e["strength"]))].append(e)
    rows = []
    for (method, strength), units in groups.items():
        row: dict[str, Any] = {
            "method": method,
            "kind": units[0].get("family", units[0]["kind"]),
            "strength": strength,
            "seeds": len(units),
        }
        for key in _KEYS:
            values = [u[key] for u in units if u[key] is not None]
            mean, std = mean_std(values) if values else (None, None)
            row[key], row[key + "_std"] = mean, std
        rows.append(row)
    return rows


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "n/a"
    return f"{100 * mean:.1f}%" + ("" if not std else f" ± {100 * std:.1f}")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _training(units: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trained adapter method (regularised runs): cost and steps to the bar over seeds."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for u in units:
        if u["variant"] == "reg":
            groups[u["method"]].append(u)
    out = []
    for method, runs in groups.items():
        reached = [r for r in runs if r["steps_to_bar"] is not None]
        out.append(
            {
                "method": method,
                "family": runs[0]["family"],
                "rank": runs[0]["rank"],
                "trainable_parameters": runs[0]["trainable_parameters"],
                "file_bytes": runs[0]["file_bytes"],
                "seconds_per_step": mean_std([r["seconds_per_step"] for r in runs]),
                "training_seconds": mean_std([r["training_seconds"] for r in runs]),
                "steps": mean_std([float(r["steps"]) for r in runs]),
                "reached_bar": f"{len(reached)}/{len(runs)}",
                "steps_to_bar": mean_std([float(r["steps_to_bar"]) for r in reached])
                if reached
                else None,
                "seconds_to_bar": mean_std([r["seconds_to_bar"] for r in reached])
                if reached
                else None,
            }
        )
    return out


def _ms(pair: tuple[float, float] | None, scale: float = 1.0, digits: int = 2) -> str:
    if pair is None:
        return "not reached"
    mean, std = pair
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std else "")


def _reading(rows: list[dict[str, Any]], base: dict[str, Any], costs: dict[str, float]) -> str:
    """One paragraph saying what the numbers say."""
    at_one = [r for r in rows if r["kind"] == "adapter" and r["strength"] == 1.0]
    free = [r for r in rows if r["kind"] in ("negative_prompt", "sld", "classifier")]
    passing = [r for r in [*at_one, *free] if r["concept_rate"] <= BAR]
    parts = [
        f"The base model shows the concept in {_pct(base['concept_rate'])} of images asked for "
        f"it (preservation {_pct(base['preservation'])})."
    ]
    if passing:
        best = max(passing, key=lambda r: r["preservation"])
        parts.append(
            f"Of the methods reaching the bar (concept rate <= {BAR:.0%}), {best['method']} "
            f"keeps the most: preservation {_pct(best['preservation'])} with concept rate "
            f"{_pct(best['concept_rate'])}."
        )
    else:
        parts.append(f"No method reaches the bar (concept rate <= {BAR:.0%}).")
    for r in sorted(at_one, key=lambda r: r["concept_rate"]):
        parts.append(
            f"{r['method']} at strength 1.0: concept "
            f"{_pct(r['concept_rate'], r['concept_rate_std'])}, "
            f"preservation {_pct(r['preservation'])}."
        )
    for r in free:
        extra = f", block rate {_pct(r['block_rate'])}" if r["kind"] == "classifier" else ""
        parts.append(
            f"{r['method']}: concept {_pct(r['concept_rate'])}, "
            f"preservation {_pct(r['preservation'])}{extra}."
        )
    base_cost = costs.get("base")
    sld = [v for k, v in costs.items() if k.startswith("SLD")]
    if base_cost and sld:
        parts.append(
            f"SLD costs {sld[0] / base_cost:.2f}x the base model per step (an extra UNet pass)."
        )
    return " ".join(parts)


def write_report(
    config: CompareConfig, results: dict[str, Any], prompts: PromptSet
) -> dict[str, Any]:
    """Write report.json, report.md, the plots and grids into ``config.out``; return the data."""
    out = config.out
    rows = aggregate(results["evaluations"])
    base = next(r for r in rows if r["kind"] == "base")
    points = [
        {
            **r,
            "label": f"{r['method']} {r['strength']:g}"
            if r["kind"] in ("adapter", "file")
            else r["method"],
        }
        for r in rows
    ]
    front = pareto_front([(p["erasure"], p["preservation"]) for p in points])
    for i, p in enumerate(points):
        p["pareto"] = i in front
    training = _training(results["training"])
    cost_rows = results["costs"]
    base_step = next(c["seconds_per_step"] for c in cost_rows if c["method"] == "base")
    cost_labels = {
        c["method"] + (" fused" if c.get("fused") else ""): c["seconds_per_step"] for c in cost_rows
    }

    files = {"report": "report.md", "json": "report.json", "scatter": "erasure_vs_preservation.png"}
    files.update(curves="strength_curves.png", costs="cost_bars.png")
    scatter(points, front, out / files["scatter"])
    curves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["kind"] in ("adapter", "file"):
            curves[r["method"]].append(r)
    strength_curves(
        {k: sorted(v, key=lambda r: r["strength"]) for k, v in curves.items()},
        out / files["curves"],
    )
    cost_bars(list(cost_labels.items()), out / files["costs"])
    grids = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        folder = out / "images" / _slug(method)
        strips = sorted(folder.glob("*.png"), key=lambda p: float(p.stem))
        if strips:
            name = f"grid_{_slug(method)}.png"
            grid([(f"{method} {p.stem}", p) for p in strips], out / name)
            grids[method] = name

    reading = _reading(rows, base, cost_labels)
    data = {
        "config": config.model_dump(mode="json"),
        "prompts": {"target": list(prompts.target), "other": list(prompts.other)},
        "bar": BAR,
        "rows": points,
        "training": training,
        "training_runs": results["training"],
        "costs": [{**c, "vs_base": c["seconds_per_step"] / base_step} for c in cost_rows],
        "budgets": results["budgets"],
        "attacks": results.get("attacks", []),
        "reading": reading,
        "files": {**files, "grids": grids},
    }
    text = json.dumps(data, indent=1)
    (out / files["json"]).write_text(text)
    (out / files["report"]).write_text(_markdown(config, data, rows))
    loaded: dict[str, Any] = json.loads(text)  # what report.json holds, tuples as lists
    return loaded


def _markdown(config: CompareConfig, data: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    main = _table(
        [
            "method",
            "strength",
            "concept shown",
            "erasure",
            "kept attribute",
            "other concepts",
            "preservation",
            "blocked",
            "Pareto",
        ],
        [
            [
                r["method"],
                f"{r['strength']:g}" if r["kind"] in ("adapter", "file", "variant") else "-",
                _pct(r["concept_rate"], r["concept_rate_std"]),
                _pct(r["erasure"]),
                _pct(r["kept"], r["kept_std"]),
                _pct(r["other"], r["other_std"]),
                _pct(r["preservation"], r["preservation_std"]),
                _pct(r["block_rate"]),
                "yes" if r["pareto"] else "",
            ]
            for r in data["rows"]
            if r["kind"] != "variant"
        ],
    )
    training = _table(
        [
            "adapter",
            "trainable params",
            "file size",
            "s/step",
            "steps",
            "reached bar",
            "steps to bar",
            "s to bar",
            "training s",
        ],
        [
            [
                t["method"],
                str(t["trainable_parameters"]),
                f"{t['file_bytes'] / 1024:.1f} KiB",
                _ms(t["seconds_per_step"], digits=3),
                _ms(t["steps"], digits=0),
                t["reached_bar"],
                _ms(t["steps_to_bar"], digits=0),
                _ms(t["seconds_to_bar"], digits=0),
                _ms(t["training_seconds"], digits=0),
            ]
            for t in data["training"]
        ],
    )
    variants = [r for r in rows if r["kind"] == "variant"]
    runs = {u["method"]: u for u in data["training_runs"]}
    regular = _table(
        [
            "adapter (seed 0)",
            "concept @1.0",
            "preservation @1.0",
            "steps (best)",
            "stopped early",
            "steps to bar",
        ],
        [
            [
                r["method"],
                _pct(r["concept_rate"]),
                _pct(r["preservation"]),
                f"{runs[r['method']]['steps']} ({runs[r['method']]['best_step']})",
                "yes" if runs[r["method"]]["stopped_early"] else "no",
                str(runs[r["method"]]["steps_to_bar"] or "not reached"),
            ]
            for r in variants
        ],
    )
    costs = _table(
        ["method", "ms/step", "x base", "extra UNet calls/step"],
        [
            [
                c["method"] + (" (fused)" if c.get("fused") else ""),
                f"{1000 * c['seconds_per_step']:.2f}",
                f"{c['vs_base']:.2f}",
                f"{c.get('extra_unet_calls_per_step', 0):g}",
            ]
            for c in data["costs"]
        ],
    )
    model = config.base or "concept world (bundled)"
    lines = [
        f"# Compare: erasing `{config.erase}` on {model}",
        "",
        data["reading"],
        "",
        f"{len(data['prompts']['target'])} prompts ask for the concept, "
        f"{len(data['prompts']['other'])} for other concepts; {config.seeds} seed(s) "
        "(training seed for adapters, sampling seed for all); mean ± std over seeds. "
        f"Bar: concept shown <= {BAR:.0%} at strength 1.0. Classifier-only: a blocked image "
        "shows nothing (not the concept, nor anything kept); its cost is the block rate.",
        "",
        "## Erasure and preservation",
        "",
        main,
        "",
        "## Adapter training cost (regularised: preservation + early stopping)",
        "",
        training,
        "",
    ]
    if variants:
        lines += ["## Regularity", "", regular, ""]
    if data["attacks"]:
        attacks = _table(
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
        budget = data["attacks"][0]["budget"]
        lines += [
            f"## Attack success (white-box, {budget} steps per attempt; `safety-lora attack`)",
            "",
            "ASR: share of the attack's images that show the concept; clean: the plain "
            "prompts' (same seeds).",
            "",
            attacks,
            "",
        ]
    lines += ["## Inference cost per denoising step", "", costs, ""]
    lines += ["## Figures", ""]
    lines += [f"![{k}]({v})" for k, v in data["files"].items() if str(v).endswith(".png")]
    lines += [f"- {m}: [{g}]({g})" for m, g in data["files"]["grids"].items()]
    return "\n".join(lines) + "\n"
