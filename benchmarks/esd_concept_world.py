"""ESD concept erasure on the concept world: LoRA vs LoHa vs LoKr; a colour, a shape, a style.

    python benchmarks/esd_concept_world.py [--model DIR] [--seeds N] [--kinds lora,loha,lokr]
        [--concepts colour,shape,style] [--steps N] [--results PATH | --no-results] [--ship]

Trains one anchored ESD-x adapter per (concept, adapter kind) on the shipped concept-world
model: the colour ``red`` ("a red square" -> "a square"), the shape ``triangle`` ("a red
triangle" -> "a red shape") and the style ``striped`` ("a striped red circle" -> "a red
circle"), with the other colours/shapes/styles as retain prompts
(:func:`safety_lora.workbench.concept_world.tasks.erasure_task`). For every adapter, at strengths 0
(the base model), 0.25, 0.5, 1.0 and 1.5, it prints the erased concept's rate on prompts
asking for it (bar: <= 5% at 1.0), the other attributes on those prompts (kept >= 85%), and
accuracy on prompts for the other concepts (bar: within 3 points of the base), with a column
saying whether the row at strength 1.0 meets all three; world 2's probes beside them: the
*paraphrase rate* (trained on "red" only, how often "crimson"/"scarlet" prompts still show
red; "pointed" for the triangle) and *neighbour kept* (on "a red circle and a blue square",
the share whose blue square is drawn as asked). Then trainable parameters, file size,
seconds per step and total training time per adapter kind.
``--ship`` copies the colour LoRA to ``safety_lora/models/adapters/`` and prints its sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path
from typing import Any

import torch
from _report import Report, ReportTable, add_arguments, first_paragraph
from rich.console import Console

from safety_lora.adapters import load_adapter
from safety_lora.models import CONCEPT_WORLD_DEFAULTS, CONCEPT_WORLD_DIR
from safety_lora.workbench.compare.metrics import BAR
from safety_lora.workbench.concept_world.tasks import ErasureTask, erasure_scores, erasure_task
from safety_lora.workbench.training import TrainConfig, TrainResult, train_adapter

NAME = "esd_concept_world"
STRENGTHS = (0.0, 0.25, 0.5, 1.0, 1.5)
#: The erasures measured, by ``--concepts`` key.
CONCEPTS = {"colour": "red", "shape": "triangle", "style": "striped"}

SHIPPED = Path(__file__).resolve().parents[1] / "safety_lora/models/adapters"
#: Rank, learning rate, steps and retain weight per adapter kind. LoKr's Kronecker factors of
#: these small layers (8x8 (x) 8x8, 2k parameters in all) fit the objective more slowly: a
#: larger rate and twice the steps (at 200 steps and lr 4e-3 it left red at 12.5% on a
#: half-trained model). Its factors are shared across the whole weight, so one step moves
#: unrelated prompts more: twice the retain weight (erasing triangle, 32 seeds, other shapes
#: went from 97.3% at weight 1 to 99.6%, the base's rate, with triangle 1.6% both times).
#: LoRA's and LoHa's rates are 4e-3 since the world-2 model: at 2e-3 LoRA's validation chose
#: step 50, which left red at 18.8% at strength 1 (16 seeds; at 4e-3 it chose step 150: red
#: 0%, 8 seeds), and LoHa left red at 25.0% (8 seeds).
KIND_SETTINGS: dict[str, dict[str, Any]] = {
    "lora": {"rank": 4, "lr": 4e-3, "steps": 200},
    "loha": {"rank": 4, "lr": 4e-3, "steps": 200},
    "lokr": {"rank": 4, "lr": 1e-2, "steps": 400, "preserve_weight": 2.0},
}


def train(pipe: Any, task: ErasureTask, kind: str, steps: int | None, out: Path) -> TrainResult:
    """One anchored ESD-x run of ``kind`` on ``task`` (``steps`` overrides the kind's)."""
    settings = {**KIND_SETTINGS[kind], **({} if steps is None else {"steps": steps})}
    config = TrainConfig(
        erase=[task.erasure()],
        preserve=task.preserve,
        method="esd-x",
        adapter=kind,  # type: ignore[arg-type]
        batch=4,
        ddim_steps=20,
        guidance_scale=float(CONCEPT_WORLD_DEFAULTS["guidance_scale"]),
        eval_every=25,
        out=out,
        **settings,
    )
    return train_adapter(config, pipe=pipe)


def _pct(value: float) -> str:
    return "-" if value != value else f"{100 * value:.1f}%"


def meets_bar(row: dict[str, float], base: dict[str, float]) -> bool:
    """The issue's bar at strength 1.0: erased <= BAR (5%), kept >= 85%, others within 3 points."""
    return (
        row["erased_rate"] <= BAR
        and row["kept_on_target"] >= 0.85
        and all(row[k] >= base[k] - 0.03 - 1e-9 for k in row if k.startswith("other_"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=CONCEPT_WORLD_DIR)
    parser.add_argument("--seeds", type=int, default=32, help="images per prompt")
    parser.add_argument("--kinds", default="lora,loha,lokr")
    parser.add_argument("--concepts", default="colour,shape,style", help=", ".join(CONCEPTS))
    parser.add_argument("--steps", type=int, default=None, help="override every kind's steps")
    parser.add_argument("--curve", default="lora,loha,lokr", help="kinds run at every strength")
    parser.add_argument("--out-dir", type=Path, default=Path("build/esd_concept_world"))
    parser.add_argument("--ship", action="store_true", help="ship the colour LoRA")
    parser.add_argument("--threads", type=int, default=1)
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(
        NAME, "ESD erasure on the concept world: LoRA, LoHa, LoKr", first_paragraph(__doc__)
    )
    torch.set_num_threads(args.threads)
    console = Console(width=140)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        args.model, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    seeds = list(range(args.seeds))
    tasks = {key: erasure_task(concept) for key, concept in CONCEPTS.items()}
    kinds = args.kinds.split(",")
    costs = ReportTable(  # printed (and recorded) after the erasure tables
        "adapter cost (anchored ESD-x, one concept)",
        ["task", "adapter", "rank", "trainable params", "file size", "s/step", "training s",
         "steps (best)"],
        justify=["left", "left", "right", "right", "right", "right", "right", "right"],
    )  # fmt: skip

    for key in args.concepts.split(","):
        task = tasks[key]
        base = erasure_scores(pipe, task, seeds=seeds)
        name = f"erase {task.attribute} {task.concept}"
        kept = " and ".join(task.kept) + " kept"
        others = [f"other {a}s" for a in task.others]
        table = report.table(
            f"{name}: {args.seeds} images per prompt",
            ["adapter", "strength", f"{task.concept} rate", f"{kept} (target)", *others,
             "paraphrase rate", "neighbour kept", "bar at 1.0"],
        )  # fmt: skip
        table.add_row("base", "0", *(_pct(base[k]) for k in base), "")
        for kind in kinds:
            out = args.out_dir / f"erase_{task.concept}_{kind}.safetensors"
            result = train(pipe, task, kind, args.steps, out)
            size = out.stat().st_size
            costs.add_row(
                name, kind, str(KIND_SETTINGS[kind]["rank"]),
                str(result.trainable_parameters), f"{size / 1024:.1f} KiB",
                f"{result.seconds_per_step:.2f}", f"{result.seconds:.0f}",
                f"{result.steps} ({result.best_step})",
            )  # fmt: skip
            load_adapter(pipe.unet, out, adapter_name="erase")
            strengths = STRENGTHS[1:] if kind in args.curve.split(",") else (1.0,)
            for strength in strengths:
                pipe.unet.set_adapters(["erase"], [strength])
                row = erasure_scores(pipe, task, seeds=seeds)
                verdict = ("yes" if meets_bar(row, base) else "NO") if strength == 1.0 else ""
                table.add_row(kind, str(strength), *(_pct(v) for v in row.values()), verdict)
            pipe.unet.unload_lora()
            if args.ship and key == "colour" and kind == "lora":
                SHIPPED.mkdir(parents=True, exist_ok=True)
                target = SHIPPED / "concept_world_erase_red.safetensors"
                shutil.copyfile(out, target)
                digest = hashlib.sha256(target.read_bytes()).hexdigest()
                shipped = f"shipped {target.name} sha256 {digest}"
                console.print(f"shipped {target} sha256 {digest}")
                table.note(shipped)
        console.print(table.rich())
    report.add(costs)
    console.print(costs.rich())
    report.save(args)


if __name__ == "__main__":
    main()
