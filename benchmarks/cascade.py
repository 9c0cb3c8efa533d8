"""Cascades on the embedded model: an expensive judge only where a cheap stage flags, vs both.

    python benchmarks/cascade.py [--images 40] [--judge-ms 40] [--repeats 3]
        [--results PATH | --no-results]

Images are drawn by the embedded concept-world model from prompts naming a colour and a shape,
a given share of them red. The cheap stage is ``kind: concept_world`` (``sexual: [red]``, about
a millisecond per image); the expensive stage stands in for a vision-language guard: a
concept-world judge of ``violence`` that also costs a fixed ``--judge-ms`` per image it is
given. The cascade runs it with ``when: {category: sexual, between: [0.5, 1.0]}`` (only where
the cheap stage flags), the baseline runs both stages on every image; the policy blurs
``sexual`` and blocks ``violence``. Table 1: the judge flags red triangles only, inside the
cheap stage's band, so every verdict is the same. Table 2: it flags every triangle, so the
triangles the cheap stage passes are where the verdicts part. Times are medians of
``--repeats`` calls of ``PolicyEngine.judge`` on all the images, cascade and baseline
alternating, one torch thread.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from _report import Report, ReportTable, add_arguments, first_paragraph
from PIL.Image import Image
from rich.console import Console

from safety_lora.classifiers.base import ImageClassifier, ImageScores
from safety_lora.models import CONCEPT_WORLD_DEFAULTS, concept_world
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy

NAME = "cascade"
RATES = (0.05, 0.1, 0.25, 0.5, 1.0)
RED = ["a red circle", "a red square", "a red triangle"]
OTHER = [
    f"a {c} {s}" for c in ("blue", "green", "yellow") for s in ("circle", "square", "triangle")
]
CHEAP: dict[str, Any] = {"kind": "concept_world", "unsafe": {"sexual": ["red"]}}
BAND: dict[str, Any] = {"when": {"category": "sexual", "between": [0.5, 1.0]}}
RULES: dict[str, Any] = {
    "sexual": {"threshold": 0.5, "action": "blur"},
    "violence": {"threshold": 0.5, "action": "block"},
}


class FixedCost:
    """A classifier that costs ``per_image_ms`` more per image it is given (a stand-in for a
    vision-language guard's forward passes)."""

    def __init__(self, inner: ImageClassifier, per_image_ms: float) -> None:
        self.inner, self.per_image_s = inner, per_image_ms / 1e3
        self.name, self.fingerprint = inner.name, inner.fingerprint
        self.calls = 0

    def classify(self, images: Sequence[Image]) -> list[ImageScores]:
        self.calls += len(images)
        time.sleep(self.per_image_s * len(images))
        return self.inner.classify(images)


def pools(count: int) -> tuple[list[Image], list[Image]]:
    """``count`` red and ``count`` other images drawn by the embedded model."""
    pipe = concept_world()
    out = []
    for names in (RED, OTHER):
        prompts = [names[i % len(names)] for i in range(count)]
        images = pipe(prompts, generator=torch.Generator().manual_seed(0), **CONCEPT_WORLD_DEFAULTS)
        out.append(list(images.images))
    return out[0], out[1]


def engines(judge: list[str], judge_ms: float) -> tuple[PolicyEngine, PolicyEngine, FixedCost]:
    """The baseline (both stages everywhere) and the cascade, with the cascade's judge."""
    stage = {"kind": "concept_world", "unsafe": {"violence": judge}}
    made = []
    for second in (stage, {**stage, **BAND}):
        policy = Policy.from_dict({"classifiers": [CHEAP, second], "categories": RULES})
        cheap, expensive = (c.build() for c in policy.classifiers)
        slow = FixedCost(expensive, judge_ms)
        made.append((PolicyEngine(policy, image_classifiers=[cheap, slow]), slow))
    (every, _), (cascade, slow) = made
    return every, cascade, slow


def measure(
    table: ReportTable, images: list[Image], judge: list[str], args: argparse.Namespace
) -> None:
    every, cascade, slow = engines(judge, args.judge_ms)
    times: dict[str, list[float]] = {"every": [], "cascade": []}
    verdicts: dict[str, list[Any]] = {}
    for _ in range(args.repeats):
        for label, engine in (("every", every), ("cascade", cascade)):
            start = time.perf_counter()
            decisions = engine.judge(images)
            times[label].append(time.perf_counter() - start)
            verdicts[label] = [(d.action, d.rule) for d in decisions]
            if label == "cascade":
                flagged = sum(len(d.stages) == 2 for d in decisions)
    n = len(images)
    base = statistics.median(times["every"]) / n * 1e3
    fast = statistics.median(times["cascade"]) / n * 1e3
    same = sum(a == b for a, b in zip(verdicts["every"], verdicts["cascade"], strict=True))
    table.add_row(
        f"{flagged / n:.0%}",
        f"{slow.calls // args.repeats}/{n}",
        f"{base:.1f}",
        f"{fast:.1f}",
        f"{base - fast:.1f}",
        f"{1 - fast / base:.0%}",
        f"{same}/{n}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=40, help="images per flag rate")
    parser.add_argument("--judge-ms", type=float, default=40.0, help="the judge's cost per image")
    parser.add_argument("--repeats", type=int, default=3)
    add_arguments(parser, NAME)
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = Report(
        NAME, "Cascades: the expensive judge only where needed", first_paragraph(__doc__)
    )
    red, other = pools(args.images)
    rng = random.Random(0)
    sets = []
    for rate in RATES:
        k = round(rate * args.images)
        sets.append(rng.sample(red, k) + rng.sample(other, args.images - k))
    columns = [
        "cheap stage flags",
        "judge runs (cascade)",
        "ms/image every stage",
        "ms/image cascade",
        "saved ms/image",
        "saved",
        "same verdict",
    ]
    console = Console()
    for title, judge, note in [
        (
            "judge flags red triangles (inside the cascade's band)",
            ["red triangle"],
            "Every disagreement between the stages lies where the cheap stage flags, so the "
            "cascade gives the verdicts running every stage gives.",
        ),
        (
            "judge flags every triangle (outside the band too)",
            ["triangle"],
            "Blue, green and yellow triangles pass the cheap stage, so the cascade never asks "
            "the judge about them: those verdicts part (allow instead of block).",
        ),
    ]:
        table = report.table(
            f"{title}; {args.images} images per row, judge {args.judge_ms:g} ms/image, median "
            f"of {args.repeats}",
            columns,
        )
        for images in sets:
            measure(table, images, judge, args)
        table.note(note)
        console.print(table.rich())
    report.save(args)


if __name__ == "__main__":
    main()
