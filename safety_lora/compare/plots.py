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


def scatter(points: Sequence[dict[str, Any]], front: Sequence[int], path: Path) -> None:
    """Erasure vs preservation, one point per method/strength, the Pareto front joined."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    kinds = sorted({p["kind"] for p in points})
    markers = dict(zip(kinds, "osD^v<>ph*", strict=False))
    for kind in kinds:
        mine = [p for p in points if p["kind"] == kind]
        ax.scatter(
            [p["erasure"] for p in mine],
            [p["preservation"] for p in mine],
            marker=markers[kind],
            label=kind,
            alpha=0.8,
        )
    for p in points:
        ax.annotate(p["label"], (p["erasure"], p["preservation"]), fontsize=6, alpha=0.7)
    best = sorted((points[i] for i in front), key=lambda p: p["erasure"])
    ax.plot(
        [p["erasure"] for p in best],
        [p["preservation"] for p in best],
        "k--",
        linewidth=1,
        label="Pareto front",
    )
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
