"""``safety-lora train``: train an ESD concept-erasure adapter (LoRA, LoHa or LoKr)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer
from pydantic import ValidationError
from rich.console import Console

from safety_lora.workbench.cli.extra import require_workbench

if TYPE_CHECKING:  # the training package imports torch: only on use, keeping --help fast
    from safety_lora.workbench.training.config import AdapterKind, Method

__all__ = ["register"]


def train(
    erase: Annotated[
        list[str], typer.Option("--erase", help="Concept to erase (repeat for several).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Adapter file to write (.safetensors).")],
    base: Annotated[
        str | None,
        typer.Option(help="Pipeline folder or hub id (default: the bundled concept-world model)."),
    ] = None,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            help="CONCEPT=ANCHOR: steer the concept's prompts to the same prompt with ANCHOR in "
            "its place ('red=' removes it: 'a red square' -> 'a square'). Without it: the empty "
            "prompt (plain ESD).",
        ),
    ] = None,
    template: Annotated[
        list[str] | None,
        typer.Option("--template", help="Prompt template with {} for the concept (default: '{}')."),
    ] = None,
    preserve: Annotated[
        list[str] | None,
        typer.Option("--preserve", help="Prompt whose predictions must not change (repeat)."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="esd-x: cross-attention only; esd-u: everything else.")
    ] = "esd-x",
    adapter: Annotated[str, typer.Option(help="lora, loha or lokr.")] = "lora",
    rank: Annotated[int, typer.Option(help="Adapter rank.")] = 4,
    alpha: Annotated[float | None, typer.Option(help="Adapter alpha (default: rank).")] = None,
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 400,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-3,
    eta: Annotated[float, typer.Option(help="How far past the anchor to push (ESD eta).")] = 1.0,
    batch: Annotated[int, typer.Option(help="Concept prompts per step.")] = 4,
    ddim_steps: Annotated[int, typer.Option(help="DDIM schedule of the partial run.")] = 50,
    guidance_scale: Annotated[float, typer.Option(help="CFG of the partial run.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Seed (the run is deterministic).")] = 0,
    val_fraction: Annotated[
        float,
        typer.Option(
            help="Share of prompts held out for validation (never trained on) (default: none; "
            "validation then uses the training prompts at noise draws training never sees)."
        ),
    ] = 0.0,
    eval_every: Annotated[
        int, typer.Option(help="Validate every N steps; 0: never (the last adapter is saved).")
    ] = 25,
    patience: Annotated[
        int | None, typer.Option(help="Stop after N validations without gain.")
    ] = None,
    checkpoint_every: Annotated[
        int | None, typer.Option(help="Write a checkpoint every N steps.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the checkpoint if present.")] = False,
    adversarial: Annotated[
        bool,
        typer.Option(
            help="Harden against soft-prompt and token attacks: AdvUnlearn-style rounds that "
            "attack the adapter every --adv-every steps and train on the attacks."
        ),
    ] = False,
    adv_every: Annotated[int, typer.Option(help="Steps between adversarial rounds.")] = 10,
    adv_warmup: Annotated[int, typer.Option(help="Steps before the first round.")] = 50,
    adv_steps: Annotated[int, typer.Option(help="Attack steps per round.")] = 10,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Train a concept-erasure adapter (ESD) and write it with its metadata."""
    require_workbench("train")
    from safety_lora.cli.erase import parse_anchors
    from safety_lora.workbench.training import (
        AdversarialTraining,
        Erasure,
        TrainConfig,
        train_adapter,
    )

    anchors = parse_anchors(anchor or [], erase)
    try:
        config = TrainConfig(
            base=base,
            erase=[
                Erasure(
                    concept=c,
                    anchor=anchors.get(c),
                    templates=template or ["{}"],
                )
                for c in erase
            ],
            preserve=preserve or [],
            method=cast("Method", _choice(method, ("esd-x", "esd-u"), "--method")),
            adapter=cast("AdapterKind", _choice(adapter, ("lora", "loha", "lokr"), "--adapter")),
            rank=rank,
            alpha=alpha,
            steps=steps,
            lr=lr,
            eta=eta,
            batch=batch,
            ddim_steps=ddim_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            val_fraction=val_fraction,
            eval_every=eval_every or None,
            patience=patience,
            checkpoint_every=checkpoint_every,
            adversarial=(
                AdversarialTraining(every=adv_every, warmup=adv_warmup, attack_steps=adv_steps)
                if adversarial
                else None
            ),
            resume=resume,
            out=out,
            device=device,
        )
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from e
    result = train_adapter(config)
    Console().print(
        f"wrote {result.path}: {result.steps} steps (best {result.best_step}"
        f"{', stopped early' if result.stopped_early else ''}), "
        f"{result.trainable_parameters} trainable parameters, "
        f"{result.seconds_per_step:.2f} s/step",
        highlight=False,
        soft_wrap=True,
    )


def _choice(value: str, allowed: tuple[str, ...], hint: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"must be one of {list(allowed)}, got {value!r}", param_hint=hint)
    return value


def register(app: typer.Typer) -> None:
    """Add the ``train`` command."""
    app.command("train")(train)
