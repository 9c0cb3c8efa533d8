"""``safety-lora policy validate|schema``: check policy files, export the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from safety_lora.console import print_error
from safety_lora.policies.schema import AdapterSpec, Policy, PolicyError

policy_app = typer.Typer(
    help="Validate policy files and export their JSON Schema.", no_args_is_help=True
)


def file_problems(policy: Policy) -> list[str]:
    """What the policy refers to but cannot be used: a missing or unreadable adapter file, one
    whose sha256 is not its pin, a missing local model folder or detector file."""
    from safety_lora.adapters import (
        AdapterFormatError,
        AdapterIntegrityError,
        read_adapter,
    )
    from safety_lora.adapters.loading import verified_bytes

    problems = []
    for i, spec in enumerate(policy.steering.adapters):
        if isinstance(spec, AdapterSpec):
            try:
                data, _ = verified_bytes(spec.path, spec.sha256)
                read_adapter(spec.path, data=data)
            except (AdapterIntegrityError, AdapterFormatError) as e:
                problems.append(f"steering.adapters.{i}.path: {e}")
    for i, config in enumerate(policy.classifiers):
        for key in ("model", "text_model", "model_path"):
            value = getattr(config, key, None)
            if isinstance(value, str) and Path(value).is_absolute() and not Path(value).exists():
                problems.append(f"classifiers.{i}.{key}: {value!r} does not exist")
    return problems


@policy_app.command("validate")
def validate(
    files: Annotated[list[Path], typer.Argument(help="Policy files (YAML or JSON) to check.")],
) -> None:
    """Validate each FILE; print every problem with its path inside the file and the bad value.

    Files the policy names are checked too: adapters exist, read, and match their sha256 pins;
    local model folders and detector files exist.
    """
    out = Console()
    failed = 0
    for path in files:
        try:
            policy = Policy.from_file(path)
        except PolicyError as e:
            failed += 1
            print_error(f"{e}")
            continue
        problems = file_problems(policy)
        if problems:
            failed += 1
            for problem in problems:
                print_error(f"{path}: {problem}")
        else:
            unjudged = ", ".join(c.value for c in policy.unjudged_images()) or "none"
            out.print(
                f"[green]✓[/green] {path}: policy {policy.name!r} is valid; not judged on "
                f"images: {unjudged}",
                highlight=False,
                soft_wrap=True,
            )
    if failed:
        raise typer.Exit(code=1)


@policy_app.command("schema")
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print the policy JSON Schema (point your editor's YAML/JSON schema setting at it)."""
    text = json.dumps(Policy.model_json_schema(), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as e:
        print_error(f"--output {output}: cannot write ({e.strerror or e})")
        raise typer.Exit(code=2) from e


def register(app: typer.Typer) -> None:
    """Add the ``policy`` command group."""
    app.add_typer(policy_app, name="policy")
