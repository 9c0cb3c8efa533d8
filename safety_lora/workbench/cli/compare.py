"""``safety-lora compare``: adapter families vs training-free alternatives, measured in one run."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from safety_lora.config_cli import CliField, ConfigArgs, add_config_command
from safety_lora.console import print_error
from safety_lora.workbench.cli.extra import require_workbench

if TYPE_CHECKING:  # the compare package imports torch: only on use, keeping --help fast
    from safety_lora.workbench.compare import CompareConfig

__all__ = ["register"]


def _presets(value: str) -> list[str]:
    """``--sld``: comma-separated presets, or ``none`` for no SLD rows."""
    return [] if value.strip() == "none" else [v.strip() for v in value.split(",") if v.strip()]


def _embedding(value: str) -> list[str]:
    """``--embedding``: comma-separated strengths, or ``none`` for no text-embedding rows."""
    return [] if value.strip() == "none" else [v.strip() for v in value.split(",") if v.strip()]


def _classifier(value: str) -> dict[str, Any]:
    """``--classifier`` as JSON (``{"kind": "nudenet"}``) or a bare kind (``nudenet``)."""
    if not value.lstrip().startswith("{"):
        return {"kind": value}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"not JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"expected a JSON object, got {value!r}")
    return parsed


def compare(
    config: ConfigArgs[CompareConfig],
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="A smoke test: fewer seeds, prompts and steps, the same code (a few minutes; "
            "its report says its verdicts decide nothing); the file and the options given "
            "still win.",
        ),
    ] = False,
) -> None:
    """Compare LoRA, LoHa and LoKr erasure adapters (trained to the bar, on several seeds)
    with closed-form erasure, negative prompt, SLD, text-embedding steering and
    classifier-only; each claim supported, refuted, equivalent or inconclusive against its
    margin (95% intervals) in report.html, report.md and report.json."""
    require_workbench("compare")
    from safety_lora.workbench.compare import run
    from safety_lora.workbench.compare.config import QUICK

    local = config.get("base") is None and config.get("device") == "cpu"
    if local:
        import torch

        torch.set_num_threads(1)  # the embedded model is tiny: one thread beats many on a CPU
    workers = 2 if local and (os.cpu_count() or 1) > 1 else 1
    settings = config.validate(defaults={**(QUICK if quick else {}), "workers": workers})
    console = Console()
    try:
        data = run(settings)
    except (FileExistsError, FileNotFoundError, ValueError, RuntimeError) as e:
        print_error(f"{e}", mark="compare:")
        raise typer.Exit(1) from e
    if settings.smoke:
        from safety_lora.workbench.compare.report import SMOKE

        console.print(f"[yellow]{SMOKE}[/yellow]")
    console.print(data["reading"])
    out = settings.out
    console.print(f"wrote {out / 'report.html'}, {out / 'report.md'} and {out / 'report.json'}")


def register(app: typer.Typer) -> None:
    """Add ``compare`` to ``app``."""
    add_config_command(
        app,
        "compare",
        compare,
        model="safety_lora.workbench.compare.config:CompareConfig",
        fields={
            "families": CliField(sep=","),
            "ranks": CliField(sep=","),
            "lr_scales": CliField(sep=","),
            "adapters": CliField("--adapter"),
            "strengths": CliField("--strength"),
            "templates": CliField("--template"),
            "sld_presets": CliField(
                "--sld",
                sep=",",
                parse=_presets,
                metavar="PRESET,...",
                help="SLD presets compared (weak, medium, strong, max); none: no SLD rows.",
            ),
            "attack_sld": CliField(
                "--attack-sld",
                sep=",",
                parse=_presets,
                metavar="PRESET,...",
                help="SLD presets attacked, of those compared (default: medium); none: none.",
            ),
            "embedding_strengths": CliField(
                "--embedding",
                sep=",",
                parse=_embedding,
                metavar="STRENGTH,...",
                help="Text-embedding steering strengths measured (1.0 included); none: no rows.",
            ),
            "attacks": CliField("--attack"),
            "classifier": CliField(
                parse=_classifier,
                metavar="KIND|JSON",
                help="With base only: the concept's image classifier, a kind (nudenet) or a "
                "JSON config.",
            ),
            "workers": CliField(default="2 on a CPU with the bundled model, else 1"),
        },
    )
