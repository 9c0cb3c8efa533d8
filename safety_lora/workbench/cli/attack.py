"""``safety-lora attack``: attack success rates of a steering method, a prompt check, a policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from safety_lora.workbench.cli.extra import require_workbench

__all__ = ["register"]


def attack(
    concept: Annotated[str, typer.Option("--erase", help="The erased concept to bring back.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json and report.md.")],
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="Steering adapter file to attack.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            metavar="closed-form|sld",
            help="Attack a closed-form edit solved now, or SLD guidance (no file).",
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            metavar="PRESET|FILE",
            help="Also attack this policy: prompt-check evasion and the whole layer.",
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(help="Pipeline folder or hub id (default: the bundled concept-world model)."),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            "--prompt", help="Prompt asking for the concept (repeat; default: the concept world's)."
        ),
    ] = None,
    attacks: Annotated[
        list[str] | None,
        typer.Option(
            "--attack", metavar="soft|tokens|evasion|layer", help="Attack (repeat; default: all)."
        ),
    ] = None,
    budget: Annotated[int, typer.Option(help="Optimisation steps per attempt.")] = 40,
    tokens: Annotated[int, typer.Option(help="Attack tokens before the prompt.")] = 3,
    attempts: Annotated[int, typer.Option(help="Attempts per prompt (different seeds).")] = 1,
    images: Annotated[int, typer.Option(help="Images judged per attempt.")] = 8,
    strength: Annotated[float, typer.Option(help="Adapter or SLD strength.")] = 1.0,
    rounds: Annotated[
        int, typer.Option(help="RECE rounds for --method closed-form (the hardened solve).")
    ] = 0,
    attack_rounds: Annotated[
        int,
        typer.Option(help="Attack rounds for --method closed-form (the attack-driven hardening)."),
    ] = 0,
    sld_preset: Annotated[str, typer.Option(help="SLD preset for --method sld.")] = "medium",
    classifier: Annotated[
        str | None,
        typer.Option(
            help="JSON image-classifier config that judges a user's model, e.g. "
            '\'{"kind": "nudenet"}\'.'
        ),
    ] = None,
    category: Annotated[
        str, typer.Option(help="The classifier's category for the concept.")
    ] = "sexual",
    seed: Annotated[int, typer.Option(help="Seed of every draw (same seed, same report).")] = 0,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
) -> None:
    """Attack an erasure: white-box soft prompt and token search, prompt-check evasion, the
    whole layer; report attack success rates beside the clean rates."""
    require_workbench("attack")
    from safety_lora.workbench.attack import AttackConfig, run_attack

    fields: dict[str, Any] = {
        "erase": concept,
        "out": out,
        "adapter": adapter,
        "method": method,
        "policy": policy,
        "base": base,
        "prompts": prompt or None,
        "budget": budget,
        "tokens": tokens,
        "attempts": attempts,
        "images": images,
        "strength": strength,
        "rounds": rounds,
        "attack_rounds": attack_rounds,
        "sld_preset": sld_preset,
        "category": category,
        "seed": seed,
        "device": device,
    }
    if attacks:
        fields["attacks"] = attacks
    if classifier is not None:
        try:
            fields["classifier"] = json.loads(classifier)
        except json.JSONDecodeError as e:
            raise typer.BadParameter(f"not JSON: {e}", param_hint="--classifier") from e
    try:
        config = AttackConfig(**fields)
    except ValidationError as e:
        raise typer.BadParameter(str(e)) from e
    report = run_attack(config)
    table = Table(title=f"attacks on {report.target} (report in {out})")
    for column in ("attack", "target", "images", "clean", "ASR", "s / attempt"):
        table.add_column(column)
    for row in report.rows:
        table.add_row(
            row.attack,
            row.target,
            str(row.images),
            f"{100 * row.clean_rate:.1f}%",
            f"{100 * row.asr:.1f}%",
            f"{row.seconds_per_attempt:.2f}",
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``attack`` command."""
    app.command("attack")(attack)
