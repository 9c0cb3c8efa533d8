"""``safety-lora compare``: adapter families vs training-free alternatives, measured in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

from safety_lora.workbench.cli.extra import require_workbench

__all__ = ["register"]


def _split(value: str, option: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items and option != "--families":
        raise typer.BadParameter(
            f"expected a comma-separated list, got {value!r}", param_hint=option
        )
    return items


def _ints(value: str) -> list[int]:
    try:
        return [int(v) for v in _split(value, "--ranks")]
    except ValueError as e:
        raise typer.BadParameter(f"expected integers, got {value!r}", param_hint="--ranks") from e


def _floats(value: str) -> list[float]:
    try:
        return [float(v) for v in _split(value, "--lr-scales")]
    except ValueError as e:
        raise typer.BadParameter(
            f"expected numbers, got {value!r}", param_hint="--lr-scales"
        ) from e


def _presets(value: str) -> list[str]:
    return [] if value.strip() == "none" else _split(value, "--sld")


def _given(**options: Any) -> dict[str, Any]:
    """The options set on the command line (None: left to the config's or --quick's default)."""
    return {k: v for k, v in options.items() if v is not None}


def _classifier(value: str | None) -> dict[str, Any] | None:
    """``--classifier`` as JSON (``{"kind": "nudenet"}``) or a bare kind (``nudenet``)."""
    if value is None:
        return None
    if value.lstrip().startswith("{"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise typer.BadParameter(f"not JSON: {e}", param_hint="--classifier") from e
        if not isinstance(parsed, dict):
            raise typer.BadParameter(
                f"expected a JSON object, got {value!r}", param_hint="--classifier"
            )
        return parsed
    return {"kind": value}


def compare(
    erase: Annotated[
        str,
        typer.Option("--erase", help="Concept to erase (concept world: a colour, shape or style)."),
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.md, report.json, plots.")],
    base: Annotated[
        str | None,
        typer.Option(
            "--base", help="Pipeline folder or hub id (default: the bundled concept world)."
        ),
    ] = None,
    anchor: Annotated[
        str | None,
        typer.Option(
            "--anchor",
            help="ESD anchor: the concept's prompts are steered to the same prompt with ANCHOR in "
            "its place ('' removes it). Default: '' for a colour, 'shape' for a shape; plain ESD "
            "(empty prompt) on --base.",
        ),
    ] = None,
    preserve: Annotated[
        list[str] | None,
        typer.Option("--preserve", help="--base only: another concept to keep (repeat)."),
    ] = None,
    families: Annotated[
        str, typer.Option(help="Adapter families to train: lora,loha,lokr.")
    ] = "lora,loha,lokr",
    ranks: Annotated[
        str, typer.Option(help="LoRA ranks setting the parameter budgets (LoHa/LoKr matched).")
    ] = "4",
    adapter: Annotated[
        list[Path] | None,
        typer.Option("--adapter", help="Also compare this adapter file (any format; repeat)."),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Training and sampling seeds (95% intervals). [default: 5]")
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option(help="Step budget of every family (default: each family's own)."),
    ] = None,
    prompts_per_concept: Annotated[
        int | None,
        typer.Option(help="Images per concept and seed (erased and each other). [default: 8]"),
    ] = None,
    lr_scales: Annotated[
        str | None,
        typer.Option(help="Stability: learning-rate multiples per family. [default: 0.5,2]"),
    ] = None,
    stability_seeds: Annotated[
        int | None,
        typer.Option(
            help="Seeds of the stability runs (and of LoRA without regularity). [default: 2]"
        ),
    ] = None,
    closed_form: Annotated[
        bool, typer.Option(help="Also compare the closed-form erasure (solved in seconds).")
    ] = True,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="Fewer seeds, prompts and steps, the same code (a few minutes)."
        ),
    ] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Processes sharing the work (default: 2 on a CPU with the bundled model)."
        ),
    ] = None,
    sld: Annotated[
        str | None,
        typer.Option(
            help="SLD presets: weak,medium,strong,max; none: no SLD rows. "
            "[default: weak,medium,strong,max]"
        ),
    ] = None,
    regularity: Annotated[
        bool,
        typer.Option(help="Also train the first family without preservation / early stopping."),
    ] = True,
    classifier: Annotated[
        str | None,
        typer.Option(help="--base only: the concept's image classifier, a kind or JSON config."),
    ] = None,
    category: Annotated[
        str, typer.Option(help="--base only: the classifier's category.")
    ] = "sexual",
    threshold: Annotated[
        float, typer.Option(help="--base only: score that counts as shown.")
    ] = 0.5,
    attack_budget: Annotated[
        int | None,
        typer.Option(
            help="White-box attack steps per attempt for the attack-success column; 0: skip. "
            "[default: 20]"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Torch device.")] = "cpu",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
) -> None:
    """Compare LoRA, LoHa and LoKr erasure adapters (trained to the bar, on several seeds)
    with closed-form erasure, negative prompt, SLD and classifier-only; verdicts with 95%
    intervals in report.html, report.md and report.json."""
    import os

    require_workbench("compare")
    from safety_lora.workbench.compare import CompareConfig, run
    from safety_lora.workbench.compare.config import QUICK

    if base is None and device == "cpu":
        import torch

        torch.set_num_threads(1)  # the embedded model is tiny: one thread beats many on a CPU
    console = Console()
    cores = os.cpu_count() or 1
    try:
        config = CompareConfig(
            base=base,
            erase=erase,
            anchor=anchor,
            preserve=preserve or [],
            families=_split(families, "--families"),  # type: ignore[arg-type]
            ranks=_ints(ranks),
            adapters=adapter or [],
            **{
                **(QUICK if quick else {}),
                **_given(
                    seeds=seeds,
                    steps=steps,
                    prompts_per_concept=prompts_per_concept,
                    stability_seeds=stability_seeds,
                    lr_scales=None if lr_scales is None else _floats(lr_scales),
                    attack_budget=attack_budget,
                    sld_presets=None if sld is None else _presets(sld),
                ),
            },
            closed_form=closed_form,
            workers=workers or (2 if base is None and device == "cpu" and cores > 1 else 1),
            regularity=regularity,
            classifier=_classifier(classifier),
            category=category,
            threshold=threshold,
            out=out,
            resume=resume,
            device=device,
        )
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(part) for part in err["loc"])
            got = f" (got {err['input']!r})" if where else ""
            console.print(f"[red]compare:[/red] {where or 'options'}: {err['msg']}{got}")
        raise typer.Exit(2) from e
    try:
        data = run(config)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        console.print(f"[red]compare:[/red] {e}")
        raise typer.Exit(1) from e
    console.print(data["reading"])
    console.print(f"wrote {out / 'report.html'}, {out / 'report.md'} and {out / 'report.json'}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to ``app``."""
    app.command("compare")(compare)
