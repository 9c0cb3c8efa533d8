"""``safety-lora attack``: attack success rates of a steering method, a prompt check, a policy."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from safety_lora.config_cli import CliField, ConfigArgs, add_config_command
from safety_lora.workbench.cli.extra import require_workbench

if TYPE_CHECKING:  # the attack package imports torch: only on use, keeping --help fast
    from safety_lora.workbench.attack import AttackConfig

__all__ = ["register"]


def attack(config: ConfigArgs[AttackConfig]) -> None:
    """Attack an erasure: white-box soft prompt and token search, latent inversion and
    image-to-image, a concept-vector search, prompt-check evasion, the whole layer; report
    attack success rates beside the clean rates."""
    require_workbench("attack")
    from safety_lora.workbench.attack import run_attack

    settings = config.validate()
    report = run_attack(settings)
    table = Table(title=f"attacks on {report.target} (report in {settings.out})")
    for column in ("attack", "target", "images", "clean", "ASR", "base ASR", "s / attempt"):
        table.add_column(column)
    for row in report.rows:
        table.add_row(
            row.attack,
            row.target,
            str(row.images),
            f"{100 * row.clean_rate:.1f}%",
            f"{100 * row.asr:.1f}%",
            "-" if row.base_asr is None else f"{100 * row.base_asr:.1f}%",
            f"{row.seconds_per_attempt:.2f}",
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add the ``attack`` command."""
    add_config_command(
        app,
        "attack",
        attack,
        model="safety_lora.workbench.attack.config:AttackConfig",
        fields={
            "prompts": CliField("--prompt"),
            "attacks": CliField("--attack"),
            "policy": CliField(metavar="PRESET|FILE"),
        },
    )
