"""PNG figures of a compare run (matplotlib, Agg backend) and per-method image grids (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

__all__ = ["cost_bars", "grid", "scatter", "strength_curves", "strip"]

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


def scatter(points: Sequence[dict[str, Any]], front: Sequence[int], path: Path) -> None:
    """Erasure vs preservation: one colour and marker per method, an adapter's strengths
    joined in order and marked by their value, the Pareto front circled (and joined when it
    has two points or more)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    colours = plt.get_cmap("tab10" if len(series(points)) <= 10 else "tab20")
    for k, (method, mine) in enumerate(series(points).items()):
        xs, ys = [p["erasure"] for p in mine], [p["preservation"] for p in mine]
        style = {"color": colours(k % colours.N), "marker": "osD^v<>ph*"[k % 10]}
        if len(mine) > 1:
            ax.plot(xs, ys, linewidth=0.8, alpha=0.6, **style, label=method)
            for p in mine:  # the strength next to its point, small, offset from the marker
                ax.annotate(f"{p['strength']:g}", (p["erasure"], p["preservation"]),
                            xytext=(3, 3), textcoords="offset points", fontsize=6,
                            color=style["color"])  # fmt: skip
        else:
            ax.scatter(xs, ys, s=36, alpha=0.9, **style, label=method)
    best = sorted((points[i] for i in front), key=lambda p: p["erasure"])
    if best:
        ax.scatter([p["erasure"] for p in best], [p["preservation"] for p in best], s=140,
                   facecolors="none", edgecolors="black", linewidths=1.0,
                   label="Pareto front (circled)")  # fmt: skip
        if len(best) > 1:
            ax.plot([p["erasure"] for p in best], [p["preservation"] for p in best], "k--",
                    linewidth=0.8)  # fmt: skip
    ax.axvline(0.95, color="grey", linestyle=":", linewidth=1, label="erasure bar (95%)")
    ax.set(xlabel="erasure (share of concept prompts without the concept)", ylabel="preservation")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="Erasure vs preservation")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def strength_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Concept rate and preservation against adapter strength, one line per adapter."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in curves.items():
        s = [r["strength"] for r in rows]
        for ax, key in zip(axes, ("concept_rate", "preservation"), strict=True):
            ax.errorbar(s, [r[key] for r in rows], yerr=[r[key + "_std"] for r in rows], label=name,
                        marker="o", capsize=3)  # fmt: skip
    axes[0].axhline(0.05, color="grey", linestyle=":", linewidth=1, label="bar (5%)")
    axes[0].set(xlabel="adapter strength", ylabel="concept rate", ylim=(-0.02, 1.02))
    axes[1].set(xlabel="adapter strength", ylabel="preservation", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    fig.suptitle("Strength curves (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cost_bars(costs: Sequence[tuple[str, float]], path: Path) -> None:
    """Milliseconds per denoising step per method."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(costs) + 1.5))
    labels = [c[0] for c in costs]
    ax.barh(labels, [1000 * c[1] for c in costs], color="tab:blue")
    ax.invert_yaxis()
    ax.set(xlabel="ms per denoising step (same batch)", title="Inference cost per step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
