"""``safety-lora audit merge``: one audit log, in time order, from many replicas' files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from safety_lora.audit import merge_audit_logs
from safety_lora.console import print_error

audit_app = typer.Typer(help="Work with audit logs (JSONL).", no_args_is_help=True)


@audit_app.command("merge")
def merge(
    logs: Annotated[
        list[Path],
        typer.Argument(help="Audit files (e.g. every replica's audit.*.jsonl).", exists=True),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged JSONL file to write.")],
) -> None:
    """Merge replicas' audit files into one, every line in time order."""
    if out.resolve() in {p.resolve() for p in logs}:
        print_error(f"--out {out} is one of the inputs", mark="error:")
        raise typer.Exit(code=2)
    try:
        records = merge_audit_logs(logs)
    except (ValueError, OSError) as e:
        print_error(f"{e}", mark="error:")
        raise typer.Exit(code=2) from e
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n")
    typer.echo(f"{len(records)} lines from {len(logs)} files -> {out}")


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command group."""
    app.add_typer(audit_app, name="audit")
