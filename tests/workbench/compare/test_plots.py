"""The erasure-vs-preservation plot tells the adapter families apart; the forest plot draws
each difference against its margin."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from safety_lora.workbench.compare.plots import forest, method_styles, scatter, series

POINTS = [
    {"method": "lora r4", "family": "lora", "strength": 1.0, "erasure": 0.9, "preservation": 0.7},
    {"method": "lora r4", "family": "lora", "strength": 0.5, "erasure": 0.6, "preservation": 0.9},
    {"method": "loha r8", "family": "loha", "strength": 1.0, "erasure": 0.95,
     "preservation": 0.6},
    {"method": "lokr r4", "family": "lokr", "strength": 1.0, "erasure": 0.97,
     "preservation": 0.5},
    {"method": "base", "family": None, "strength": 0.0, "erasure": 0.1, "preservation": 1.0},
]  # fmt: skip


def test_points_are_grouped_by_method_in_strength_order() -> None:
    groups = series(POINTS)
    assert list(groups) == ["lora r4", "loha r8", "lokr r4", "base"]
    assert [p["strength"] for p in groups["lora r4"]] == [0.5, 1.0]


def _has(image: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(image.astype(int) - rgb).sum(axis=-1) < 40).any())


def _hue(rgba: tuple[float, ...]) -> float:
    import colorsys

    return colorsys.rgb_to_hsv(*rgba[:3])[0]


def test_families_differ_in_hue_and_marker(tmp_path: Path) -> None:
    """LoRA blue circles, LoHa orange squares, LoKr green triangles: hues far apart, and a
    family's second row a shade of its own hue."""
    points = [*POINTS, {**POINTS[0], "method": "lora r8", "erasure": 0.8}]
    styles = method_styles(points)
    hues = {m: _hue(styles[m]["color"]) for m in ("lora r4", "loha r8", "lokr r4")}
    assert [styles[m]["marker"] for m in hues] == ["o", "s", "^"]
    values = sorted(hues.values())
    assert min(b - a for a, b in itertools.pairwise(values)) > 0.15
    assert abs(_hue(styles["lora r8"]["color"]) - hues["lora r4"]) < 0.05
    assert styles["lora r8"]["color"] != styles["lora r4"]["color"]
    assert styles["base"]["marker"] not in "os^"
    path = tmp_path / "s.png"
    scatter(points, front=[0, 2, 4], path=path)
    with Image.open(path) as png:  # the full range beside a zoom into erasure >= 0.85
        assert png.width > 1.8 * png.height


def _has(image: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(image.astype(int) - rgb).sum(axis=-1) < 40).any())


def test_forest_draws_each_verdict_in_its_colour(tmp_path: Path) -> None:
    row = {"a": "lokr r4", "b": "lora r4", "measure": "concept shown", "margin": 0.1,
           "margin_text": "±10 points"}  # fmt: skip
    comparisons = [
        {**row, "difference": 0.3, "difference_ci": (0.2, 0.4), "verdict": "supported"},
        {**row, "difference": 0.0, "difference_ci": (-0.05, 0.05), "verdict": "equivalent"},
    ]
    path = tmp_path / "f.png"
    forest(comparisons, path)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert _has(image, (44, 160, 44)) and _has(image, (31, 119, 180))  # green, blue
    assert not _has(image, (214, 39, 40))  # no refuted (red) row
