"""``safety-lora train``: train an ESD concept-erasure adapter (LoRA, LoHa or LoKr)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from safety_lora.config_cli import CliField, ConfigArgs, add_config_command
from safety_lora.workbench.cli.extra import require_workbench

if TYPE_CHECKING:  # the training package imports torch: only on use, keeping --help fast
    from safety_lora.workbench.training import TrainConfig

__all__ = ["register"]


def _every(text: str) -> int | None:
    """``--eval-every``: 0 is never (None)."""
    try:
        return int(text) or None
    except ValueError as e:
        raise typer.BadParameter(f"expected an integer, got {text!r}") from e


def train(
    config: ConfigArgs[TrainConfig],
    erase: Annotated[
        list[str] | None,
        typer.Option(
            "--erase", help="Concept to erase (repeat for several; replaces the file's erase)."
        ),
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
) -> None:
    """Train a concept-erasure adapter (ESD) and write it with its metadata."""
    require_workbench("train")
    from safety_lora.cli.erase import parse_anchors
    from safety_lora.workbench.training import train_adapter

    overrides: dict[str, Any] = {}
    if erase:
        anchors = parse_anchors(anchor or [], erase)
        templates = template or ["{}"]
        overrides["erase"] = [
            {"concept": c, "anchor": anchors.get(c), "templates": templates} for c in erase
        ]
    elif anchor or template:
        raise typer.BadParameter(
            "needs --erase (the file's erase entries carry their own)",
            param_hint=["--anchor", "--template"],
        )
    if adversarial:
        rounds = {"every": adv_every, "warmup": adv_warmup, "attack_steps": adv_steps}
        overrides["adversarial"] = {**(config.get("adversarial") or {}), **rounds}
    result = train_adapter(config.validate(overrides=overrides))
    Console().print(
        f"wrote {result.path}: {result.steps} steps (best {result.best_step}"
        f"{', stopped early' if result.stopped_early else ''}), "
        f"{result.trainable_parameters} trainable parameters, "
        f"{result.seconds_per_step:.2f} s/step",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add the ``train`` command."""
    add_config_command(
        app,
        "train",
        train,
        model="safety_lora.workbench.training.config:TrainConfig",
        exclude=("erase", "adversarial"),
        fields={
            "target_modules": CliField("--target-module"),
            "eval_every": CliField(
                parse=_every,
                metavar="INTEGER",
                help="Validate every N steps; 0: never (the last adapter is saved).",
            ),
        },
    )
