"""NudeNet backend vs raw ``NudeDetector.detect_batch`` on the same images (target ratio <= 1.05).

The raw side gets ready-made BGR arrays; ours gets PIL images, so its time includes the
PIL -> BGR conversion and the score mapping. Both use one onnxruntime thread and are timed
in alternation, swapping which goes first each round (best and median of ``--rounds``).

    .venv/bin/python benchmarks/nudenet_overhead.py [--repeat 4] [--rounds 5] [--batch-size 4]
        [--results PATH | --no-results]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import nudenet
import numpy as np
import skimage.data
from _report import Report, add_arguments, first_paragraph
from nudenet import NudeDetector
from PIL import Image
from rich.console import Console

from safety_lora.classifiers.nudenet import NudeNetClassifier, onnx_session

NAME = "nudenet_overhead"
PHOTOS = ["astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "camera.png", "moon.png"]


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=4, help="copies of each sample photo")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "NudeNet backend overhead", first_paragraph(__doc__))

    folder = Path(skimage.data.__file__).parent
    pil = [Image.open(folder / name).convert("RGB") for name in PHOTOS] * args.repeat
    bgr = [cv2.cvtColor(np.asarray(im), cv2.COLOR_RGB2BGR) for im in pil]

    ours = NudeNetClassifier(batch_size=args.batch_size, threads=1)
    raw = NudeDetector()
    raw.onnx_session = onnx_session(Path(nudenet.__file__).parent / "320n.onnx", threads=1)

    def run_raw() -> object:
        return raw.detect_batch(bgr, batch_size=args.batch_size)

    def run_ours() -> object:
        return ours.classify(pil)

    run_raw(), run_ours()  # warm-up
    raw_t: list[float] = []
    ours_t: list[float] = []
    for r in range(args.rounds):  # alternate which side goes first
        if r % 2:
            ours_t.append(_timed(run_ours))
        raw_t.append(_timed(run_raw))
        if not r % 2:
            ours_t.append(_timed(run_ours))

    n = len(pil)
    table = report.table(
        f"nudenet backend overhead ({n} images, batch {args.batch_size}, 1 thread)",
        ["variant", "best s", "median s", "ms / image", "ratio (best)", "ratio (median)"],
    )
    base, base_median = min(raw_t), float(np.median(raw_t))
    for label, t in (("raw detect_batch", raw_t), ("safety_lora nudenet", ours_t)):
        table.add_row(
            label,
            f"{min(t):.3f}",
            f"{float(np.median(t)):.3f}",
            f"{1000 * min(t) / n:.1f}",
            f"{min(t) / base:.3f}",
            f"{float(np.median(t)) / base_median:.3f}",
        )
    Console(width=120).print(table.rich())
    report.save(args)


if __name__ == "__main__":
    main()
