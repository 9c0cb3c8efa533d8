"""Quality and speed of the shipped concept-world model, measured by the analyser.

    python benchmarks/concept_world_quality.py [--model DIR] [--world 1|2] [--seeds N]
        [--steps S] [--guidance G] [--results PATH | --no-results]

Prints: colour/shape correctness over >= 200 single-object generations at the shipped
sampling settings, per-colour and per-shape confusion tables, two-object prompt correctness
(per object), seconds per 32x32 image (batch 1), and the analyser's own accuracy on
generated ground truth. ``--world 2`` adds world 2's sets: colour synonyms, styles (fill
textures) and styled two-object scenes, with world 2's bars (single colour >= 99%, shape
>= 97%; two objects >= 90% per object and attribute; style >= 90%; synonyms >= 95%).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

import torch
from _report import Report, ReportTable, add_arguments, first_paragraph
from diffusers import StableDiffusionPipeline
from rich.console import Console

from safety_lora.concept_world.analyser import analyse
from safety_lora.concept_world.world import COLOURS, SHAPES, STYLES, SYNONYMS, generate
from safety_lora.models import CONCEPT_WORLD_DEFAULTS, CONCEPT_WORLD_DIR
from safety_lora.workbench.concept_world.evaluate import Generation, accuracy, confusion, evaluate

NAME = "concept_world_quality"
FULL = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
PARTIAL = [f"a {c} shape" for c in COLOURS] + [f"a {s}" for s in SHAPES]
VARIANTS = ["a small red circle on the left", "a large blue triangle", "a green square at the top"]
TWO = [
    "a red circle and a blue square",
    "a green triangle and a yellow circle",
    "a blue square and a red triangle",
    "a yellow square and a green circle",
]
SYNONYM_PROMPTS = [f"a {w} {s}" for ws in SYNONYMS.values() for w in ws for s in SHAPES]
STYLED = [f"a {st} {c} {s}" for st in STYLES for c in ("red", "blue") for s in SHAPES]
STYLED_TWO = [
    "a striped red circle and a dotted blue square",
    "a dotted green triangle and a yellow circle",
    "a crimson square and a striped azure triangle",
]


def _confusion_table(
    report: Report, results: list[Generation], attribute: str, names: list[str]
) -> ReportTable:
    counts = confusion(results, attribute)
    table = report.table(f"{attribute}: asked (rows) vs seen (columns)", ["asked", *names, "none"])
    for asked in names:
        table.add_row(asked, *(str(counts[(asked, seen)]) for seen in [*names, "none"]))
    return table


def _analyser_accuracy(n: int, world: int) -> float:
    correct = 0
    for sample in generate(n, seed=2024, version=world):
        seen = sorted(analyse(sample.image).objects, key=lambda o: o.box[0])
        correct += [(o.colour, o.shape, o.style) for o in seen] == [
            (o.colour, o.shape, o.style) for o in sample.scene.objects
        ]
    return correct / n


def _per_object(results: list[Generation], attribute: str) -> str:
    """Share of requested objects (not whole images) drawn right in ``attribute``."""
    counts = confusion(results, attribute)
    total = sum(counts.values())
    right = sum(n for (asked, seen), n in counts.items() if asked == seen)
    return f"{right / total:.1%}" if total else "-"


def _in_caption_order(results: list[Generation]) -> str:
    """Share of multi-object images drawn whole in the order named (first on the left),
    the world's convention, which the per-object scores do not require."""
    right = 0
    for r in results:
        objects = sorted(r.analysis.objects[: len(r.wanted)], key=lambda o: o.box[0])
        seen = [(o.colour, o.shape) for o in objects]
        right += seen == [(w.colour, w.shape) for w in r.wanted]
    return f"{right / len(results):.1%}" if results else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=CONCEPT_WORLD_DIR)
    parser.add_argument("--seeds", type=int, default=12, help="seeds per full prompt")
    parser.add_argument(
        "--steps", type=int, default=int(CONCEPT_WORLD_DEFAULTS["num_inference_steps"])
    )
    parser.add_argument(
        "--guidance", type=float, default=float(CONCEPT_WORLD_DEFAULTS["guidance_scale"])
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--world", type=int, choices=(1, 2), default=1, help="sets to measure")
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "Concept world: quality and speed", first_paragraph(__doc__))
    torch.set_num_threads(args.threads)
    console = Console()

    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    settings = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    seeds = list(range(args.seeds))
    single = evaluate(pipe, FULL, seeds=seeds, **settings)
    single += evaluate(
        pipe, PARTIAL + VARIANTS, seeds=seeds[: max(1, args.seeds * 2 // 3)], **settings
    )
    sets = {"single object": single, "two objects": evaluate(pipe, TWO, seeds=seeds, **settings)}
    if args.world == 2:
        sets["synonyms"] = evaluate(pipe, SYNONYM_PROMPTS, seeds=seeds[:4], **settings)
        sets["styles"] = evaluate(pipe, STYLED, seeds=seeds[:6], **settings)
        sets["styled two objects"] = evaluate(pipe, STYLED_TWO, seeds=seeds, **settings)

    columns = ["set", "generations"]
    for attribute in ("colour", "shape", "style"):
        columns += [f"{attribute} correct", "per object"]
    summary = report.table(f"concept world quality ({args.model.name}, {settings})", columns)
    for name, results in sets.items():
        cells = []
        for attribute in ("colour", "shape", "style"):
            value = accuracy(results, attribute)
            cells += [f"{value:.1%}" if value == value else "-", _per_object(results, attribute)]
        summary.add_row(name, str(len(results)), *cells)
    console.print(summary.rich())
    for name in ("two objects", "styled two objects"):
        if name in sets:
            order = (
                f"{name}: whole image in caption order (first named on the left): "
                f"{_in_caption_order(sets[name])}"
            )
            summary.note(order)
            console.print(order)
    console.print(_confusion_table(report, single, "colour", list(COLOURS)).rich())
    console.print(_confusion_table(report, single, "shape", list(SHAPES)).rich())
    failures = Counter(
        r.prompt for r in single if r.colour_correct is False or r.shape_correct is False
    )
    console.print("most failing prompts:", failures.most_common(5))
    summary.note(f"most failing prompts: {failures.most_common(5)}")

    timings = []
    for seed in range(10):
        began = time.perf_counter()
        pipe("a red circle", generator=torch.Generator().manual_seed(seed), **settings)
        timings.append(time.perf_counter() - began)
    timings.sort()
    speed = (
        f"seconds per image (batch 1, {args.threads} thread(s)): "
        f"median {timings[len(timings) // 2]:.3f}, min {timings[0]:.3f}"
    )
    summary.note(speed)
    console.print(speed)
    analyser = (
        f"analyser accuracy on 1000 generated world-{args.world} ground-truth images "
        f"(every object's colour, shape and style): {_analyser_accuracy(1000, args.world):.2%}"
    )
    summary.note(analyser)
    console.print(analyser)
    report.save(args)


if __name__ == "__main__":
    main()
