"""The erasure-vs-preservation plot: one colour per method, the Pareto front it names drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from safety_lora.workbench.compare.plots import scatter, series

POINTS = [
    {"method": "lora r4", "strength": 1.0, "erasure": 0.9, "preservation": 0.7},
    {"method": "lora r4", "strength": 0.5, "erasure": 0.6, "preservation": 0.9},
    {"method": "loha r8", "strength": 1.0, "erasure": 0.95, "preservation": 0.6},
    {"method": "base", "strength": 0.0, "erasure": 0.1, "preservation": 1.0},
]


def test_points_are_grouped_by_method_in_strength_order() -> None:
    groups = series(POINTS)
    assert list(groups) == ["lora r4", "loha r8", "base"]
    assert [p["strength"] for p in groups["lora r4"]] == [0.5, 1.0]


def _has(image: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(image.astype(int) - rgb).sum(axis=-1) < 40).any())


def test_each_method_has_its_own_colour(tmp_path: Path) -> None:
    path = tmp_path / "s.png"
    scatter(POINTS, front=[0, 2, 3], path=path)
    image = np.asarray(Image.open(path).convert("RGB"))
    tab10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44)]  # matplotlib's first three
    assert all(_has(image, colour) for colour in tab10)
    # the full range beside a zoom into erasure >= 0.85, where methods at the bar crowd
    with Image.open(path) as png:
        width, height = png.size
    assert width > 1.8 * height
