"""PNG figures of a compare run (matplotlib, Agg backend) and per-method image grids (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

__all__ = [
    "FAMILY_STYLES",
    "cost_bars",
    "forest",
    "grid",
    "method_styles",
    "scatter",
    "series",
    "stability_plot",
    "strength_curves",
    "strip",
]

_CELL = 64
_LABEL = 150


def strip(images: Sequence[Image.Image | None], cell: int = _CELL) -> Image.Image:
    """Images side by side, each scaled to ``cell`` pixels; a withheld image is a dark grey X."""
    out = Image.new("RGB", (cell * max(1, len(images)), cell), (40, 40, 40))
    draw = ImageDraw.Draw(out)
    for i, image in enumerate(images):
        if image is None:
            draw.line((i * cell, 0, (i + 1) * cell - 1, cell - 1), fill=(200, 200, 200), width=2)
            draw.line((i * cell, cell - 1, (i + 1) * cell - 1, 0), fill=(200, 200, 200), width=2)
            continue
        out.paste(
            image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (i * cell, 0)
        )
    return out


def grid(rows: Sequence[tuple[str, Path]], path: Path) -> None:
    """Labelled strips (``(label, strip.png)``) stacked into one image at ``path``."""
    strips = [(label, Image.open(p).convert("RGB")) for label, p in rows]
    width = _LABEL + max(s.width for _, s in strips)
    out = Image.new("RGB", (width, sum(s.height for _, s in strips)), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    y = 0
    for label, image in strips:
        out.paste(image, (_LABEL, y))
        draw.text((4, y + image.height // 2 - 6), label, fill=(0, 0, 0))
        y += image.height
    out.save(path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series(points: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The points grouped by method (each adapter with its strengths, in order): one colour,
    marker and line per method in :func:`scatter`."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in points:
        out.setdefault(p["method"], []).append(p)
    return {m: sorted(ps, key=lambda p: p.get("strength", 0.0)) for m, ps in out.items()}


#: Each adapter family's colour map (its rows in shades of one hue) and marker.
FAMILY_STYLES: dict[str, tuple[str, str]] = {
    "lora": ("Blues", "o"),
    "loha": ("Oranges", "s"),
    "lokr": ("Greens", "^"),
}
#: The other methods' colours (matplotlib's tab10 without the families' blue, orange, green)
#: and markers.
_OTHERS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
_OTHER_MARKERS = "Dvp*Xh<>"


def method_styles(points: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method, its colour and marker: a family's rows in shades of the family's hue (its
    first row darkest) with the family's marker; any other method its own colour and marker."""
    plt = _pyplot()
    methods = list(series(points))
    family = {p["method"]: p.get("family") for p in points}
    out: dict[str, dict[str, Any]] = {}
    others = 0
    for method in methods:
        kind = family[method]
        if kind in FAMILY_STYLES:
            cmap, marker = FAMILY_STYLES[kind]
            mine = [m for m in methods if family[m] == kind]
            shade = 0.85 - 0.45 * mine.index(method) / max(1, len(mine) - 1)
            out[method] = {"color": plt.get_cmap(cmap)(shade), "marker": marker}
        else:
            out[method] = {
                "color": _OTHERS[others % len(_OTHERS)],
                "marker": _OTHER_MARKERS[others % len(_OTHER_MARKERS)],
            }
            others += 1
    return out


def _draw_methods(ax: Any, points: Sequence[dict[str, Any]], styles: dict[str, Any]) -> None:
    """Every method's points on ``ax``: error bars, an adapter's strengths joined in order,
    its marker growing with the strength (no point labels: the legend names the methods)."""
    for method, mine in series(points).items():
        xs, ys = [p["erasure"] for p in mine], [p["preservation"] for p in mine]
        style = styles[method]
        if all(p.get("erasure_ci") and p.get("preservation_ci") for p in mine):
            ax.errorbar(xs, ys, xerr=_err(mine, "erasure"), yerr=_err(mine, "preservation"),
                        fmt="none", ecolor=style["color"], alpha=0.5, capsize=2,
                        linewidth=0.8)  # fmt: skip
        sizes = [24 + 36 * p.get("strength", 1.0) for p in mine] if len(mine) > 1 else [40]
        if len(mine) > 1:
            ax.plot(xs, ys, linewidth=1.0, alpha=0.7, color=style["color"])
        ax.scatter(xs, ys, s=sizes, alpha=0.95, edgecolors="black", linewidths=0.4,
                   label=method, **style)  # fmt: skip


def _draw_front(ax: Any, best: Sequence[dict[str, Any]]) -> None:
    if best:
        ax.scatter([p["erasure"] for p in best], [p["preservation"] for p in best], s=140,
                   facecolors="none", edgecolors="black", linewidths=1.0,
                   label="Pareto front (circled)")  # fmt: skip
        if len(best) > 1:
            ax.plot([p["erasure"] for p in best], [p["preservation"] for p in best], "k--",
                    linewidth=0.8)  # fmt: skip
    ax.axvline(0.95, color="grey", linestyle=":", linewidth=1, label="erasure bar (95%)")


#: The zoomed panel shows erasure from here up, where the methods that pass the bar crowd.
ZOOM_FROM = 0.85


def scatter(points: Sequence[dict[str, Any]], front: Sequence[int], path: Path) -> None:
    """Erasure vs preservation: the adapter families told apart at a glance (LoRA blue
    circles, LoHa orange squares, LoKr green triangles; :data:`FAMILY_STYLES`), every other
    method its own colour and marker; an adapter's strengths joined in order, the marker
    growing with the strength; the Pareto front circled (and joined when it has two points or
    more). A second panel zooms into erasure >= ``ZOOM_FROM``, where the methods that pass
    the bar sit close together; the legend, outside both panels, names every method."""
    plt = _pyplot()
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(14, 6), width_ratios=(1, 1))
    styles = method_styles(points)
    best = sorted((points[i] for i in front), key=lambda p: p["erasure"])
    for axes in (ax, zoom):
        _draw_methods(axes, points, styles)
        _draw_front(axes, best)
        axes.set(xlabel="erasure (share of concept prompts without the concept)",
                 ylabel="preservation")  # fmt: skip
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="Erasure vs preservation")
    near = [p["preservation"] for p in points if p["erasure"] >= ZOOM_FROM]
    low = min([v for v in near if v >= 0.6] or [0.6])
    zoom.set(xlim=(ZOOM_FROM - 0.005, 1.01), ylim=(low - 0.04, 1.01),
             title=f"Zoom: erasure >= {ZOOM_FROM:g}")  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right", markerscale=0.8)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Each verdict's colour in the forest plot.
_VERDICT_COLOURS = {
    "supported": "tab:green",
    "refuted": "tab:red",
    "equivalent": "tab:blue",
    "inconclusive": "tab:gray",
    "inconclusive (did not converge)": "tab:olive",
}


def forest(comparisons: Sequence[dict[str, Any]], path: Path) -> None:
    """Each comparison's difference "A better by" and its 95% interval, in units of its
    margin (so every margin is the band [-1, 1]), coloured by its verdict: supported right of
    the band, refuted left of it, equivalent inside it."""
    plt = _pyplot()
    n = max(1, len(comparisons))
    fig, ax = plt.subplots(figsize=(11, 0.55 * n + 2.0))
    ax.axvspan(-1, 1, color="#e8e8e8", label="margin (practical equivalence)")
    ax.axvline(0, color="grey", linewidth=0.8)
    seen: set[str] = set()
    for i, c in enumerate(comparisons):
        m = c["margin"] or 1.0
        lo, hi = (v / m for v in c["difference_ci"])
        colour = _VERDICT_COLOURS.get(c["verdict"], "black")
        label = None if c["verdict"] in seen else c["verdict"]
        seen.add(c["verdict"])
        ax.plot([lo, hi], [i, i], color=colour, linewidth=2.5, solid_capstyle="butt")
        ax.plot([c["difference"] / m], [i], "o", color=colour, label=label)
    names = [f"{c['a']} vs {c['b']}\n{c['measure']} ({c['margin_text']})" for c in comparisons]
    ax.set_yticks(range(len(comparisons)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("A better by (in units of the margin; 95% interval)")
    ax.set_title("Each claim's differences against their margins", pad=24)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=5, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _err(rows: Sequence[dict[str, Any]], key: str) -> list[list[float]]:
    """Matplotlib's asymmetric error bars from each row's ``key`` and ``key_ci``."""
    lows = [max(0.0, r[key] - r[key + "_ci"][0]) for r in rows]
    return [lows, [max(0.0, r[key + "_ci"][1] - r[key]) for r in rows]]


def strength_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Concept rate and preservation against strength, one line per adapter (and text-embedding
    steering), 95% intervals as error bars."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in curves.items():
        s = [r["strength"] for r in rows]
        for ax, key in zip(axes, ("concept_rate", "preservation"), strict=True):
            ax.errorbar(s, [r[key] for r in rows], yerr=_err(rows, key), label=name,
                        marker="o", capsize=3)  # fmt: skip
    axes[0].axhline(0.05, color="grey", linestyle=":", linewidth=1, label="bar (5%)")
    axes[0].set(xlabel="strength", ylabel="concept rate", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="strength", ylabel="preservation", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    fig.suptitle("Strength curves (mean, 95% interval over seeds and prompts)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_bars(costs: Sequence[dict[str, Any]], path: Path) -> None:
    """Per-step cost as a multiple of the base model's, with its 95% interval, per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(costs) + 1.5))
    labels = [c["method"] + (f" ({c['mode']})" if c["mode"] else "") for c in costs]
    ratios = [c["vs_base"] for c in costs]
    err = [[r - c["vs_base_ci"][0] for r, c in zip(ratios, costs, strict=True)],
           [c["vs_base_ci"][1] - r for r, c in zip(ratios, costs, strict=True)]]  # fmt: skip
    ax.barh(labels, ratios, xerr=err, color="tab:blue", capsize=3)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.invert_yaxis()
    ax.set(xlabel="x base per denoising step (interleaved pairs)", title="Inference cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def stability_plot(stability: Sequence[dict[str, Any]], path: Path) -> None:
    """Per family, each run's preservation and concept rate against its learning-rate scale."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    families = list(dict.fromkeys(s["family"] for s in stability))
    colours = plt.get_cmap("tab10")
    for k, family in enumerate(families):
        mine = [s for s in stability if s["family"] == family]
        for ax, key in zip(axes, ("preservation", "concept_rate"), strict=True):
            xs = [s["lr_scale"] * (1 + 0.03 * (k - 1)) for s in mine for _ in s["points"]]
            ys = [p[key] for s in mine for p in s["points"]]
            ax.scatter(xs, ys, color=colours(k), marker="osD^v"[k % 5], alpha=0.7,
                       label=family)  # fmt: skip
            means = [sum(p[key] for p in s["points"]) / len(s["points"]) for s in mine]
            ax.plot([s["lr_scale"] for s in mine], means, color=colours(k), linewidth=0.8)
    axes[1].axhline(0.05, color="grey", linestyle=":", linewidth=1, label="bar (5%)")
    for ax, label in zip(axes, ("preservation @1.0", "concept shown @1.0"), strict=True):
        ax.set(xscale="log", xlabel="learning rate (x the family's)", ylabel=label,
               ylim=(-0.02, 1.02))  # fmt: skip
        scales = sorted({s["lr_scale"] for s in stability})
        ax.set_xticks(scales, [f"{x:g}x" for x in scales])
    axes[0].legend(fontsize=7)
    fig.suptitle("Stability: every run, and the mean per learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
