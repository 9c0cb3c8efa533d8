"""``safety-lora compare``: adapter families vs training-free alternatives, measured in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console

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
        str, typer.Option("--erase", help="Concept to erase (concept world: a colour or shape).")
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
    seeds: Annotated[int, typer.Option(help="Training and sampling seeds (mean ± std).")] = 3,
    steps: Annotated[int, typer.Option(help="Training steps per adapter.")] = 150,
    prompts_per_concept: Annotated[
        int, typer.Option(help="Images per concept and seed (erased and each other concept).")
    ] = 8,
    sld: Annotated[
        str, typer.Option(help="SLD presets: weak,medium,strong,max; none: no SLD rows.")
    ] = "weak,medium,strong,max",
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
        int,
        typer.Option(
            help="White-box attack steps per attempt for the attack-success column; 0: skip."
        ),
    ] = 20,
    device: Annotated[str, typer.Option(help="Torch device.")] = "cpu",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
) -> None:
    """Compare LoRA, LoHa and LoKr erasure adapters with negative prompt, SLD, classifier-only."""
    from safety_lora.compare import CompareConfig, run

    if base is None and device == "cpu":
        import torch

        torch.set_num_threads(1)  # the embedded model is tiny: one thread beats many on a CPU
    console = Console()
    try:
        config = CompareConfig(
            base=base,
            erase=erase,
            anchor=anchor,
            preserve=preserve or [],
            families=_split(families, "--families"),  # type: ignore[arg-type]
            ranks=_ints(ranks),
            adapters=adapter or [],
            seeds=seeds,
            steps=steps,
            prompts_per_concept=prompts_per_concept,
            sld_presets=[] if sld.strip() == "none" else _split(sld, "--sld"),
            regularity=regularity,
            classifier=_classifier(classifier),
            category=category,
            threshold=threshold,
            attack_budget=attack_budget,
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
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]compare:[/red] {e}")
        raise typer.Exit(1) from e
    console.print(data["reading"])
    console.print(f"wrote {out / 'report.md'} and {out / 'report.json'}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to ``app``."""
    app.command("compare")(compare)
