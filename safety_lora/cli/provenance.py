"""``safety-lora provenance FILE...``: what each image carries and whether its signature
verifies; and the ``--provenance-key``/``--provenance-cert`` pair of ``generate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from safety_lora.console import print_error
from safety_lora.provenance import (
    DIGITAL_SOURCE_TYPE,
    Provenance,
    ProvenanceError,
    ProvenanceSettings,
    read_provenance,
)

_OPTIONS = {"signer_key": "--provenance-key", "certificate_chain": "--provenance-cert"}
_SIGNATURES = {
    "trusted": "[green]signature valid, signer trusted[/green]",
    "valid": "[green]signature valid[/green] (signer not checked against a trust list: "
    "--trust-anchors)",
    "untrusted": "[red]signature valid, but the signer is not under --trust-anchors[/red]",
    "invalid": "[red]signature INVALID[/red]",
    "unverified": "[yellow]not verified[/yellow]",
    "unsigned": "[yellow]no signature[/yellow]",
    "none": "no provenance record",
}


def provenance(
    files: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG...).")],
    trust_anchors: Annotated[
        Path | None,
        typer.Option(
            "--trust-anchors",
            exists=True,
            dir_okay=False,
            help="PEM root certificates the signer must chain to (else any valid signature).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Print what each image carries (a C2PA manifest or the unsigned record) and whether
    its signature verifies.

    Exit status: 1 when a signature fails verification (or, with --trust-anchors, its signer
    is not under them); 2 when a file cannot be read or checked; else 0.
    """
    found: list[tuple[Path, Provenance]] = []
    unreadable = False
    for path in files:
        try:
            found.append((path, read_provenance(path, trust_anchors=trust_anchors)))
        except ProvenanceError as e:
            print_error(e)
            unreadable = True
    if as_json:
        typer.echo(json.dumps([{"file": str(p), **f.to_dict()} for p, f in found], indent=2))
    else:
        console = Console()
        for path, record in found:
            _show(console, path, record)
    failed = [str(p) for p, f in found if f.failed]
    unverified = [(str(p), f.note) for p, f in found if f.signature == "unverified"]
    if failed:
        print_error(f"signature fails verification: {', '.join(failed)}")
        raise typer.Exit(code=1)
    if unverified:
        print_error(f"cannot verify {', '.join(p for p, _ in unverified)}: {unverified[0][1]}")
    if unreadable or unverified:
        raise typer.Exit(code=2)


def _show(console: Console, path: Path, found: Provenance) -> None:
    """One file's record as a small table."""
    kind = {"c2pa": "C2PA manifest", "unsigned": "unsigned record", "none": ""}[found.kind]
    head = ", ".join(part for part in (kind, _SIGNATURES[found.signature]) if part)
    console.print(f"[bold]{escape(str(path))}[/bold]: {head}", highlight=False, soft_wrap=True)
    rows: list[tuple[str, str | None]] = [("signer", found.signer)]
    source = found.digital_source_type
    if source is not None:
        ai = "AI-generated" if source == DIGITAL_SOURCE_TYPE else "other"
        rows.append(("digital source", f"{source.rsplit('/', 1)[-1]} ({ai})"))
    rows.append(("claim generator", found.claim_generator))
    record = found.record or {}
    for key, label in (
        ("generator", "generator"),
        ("action", "action"),
        ("rule", "rule"),
        ("flagged", "flagged"),
        ("policy_sha256", "policy sha256"),
        ("decision_id", "decision id"),
        ("prompt", "prompt"),
    ):
        value = record.get(key)
        rows.append((label, ", ".join(value) if isinstance(value, list) else value))
    untrusted_only = found.signature == "valid"  # the head says so already
    rows += [
        ("failure", failure)
        for failure in found.failures
        if not (untrusted_only and failure.startswith("signingCredential.untrusted"))
    ]
    rows.append(("note", found.note or None))
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # a sha256 whole, not cut with an ellipsis
    for label, value in rows:
        if value is not None:
            table.add_row(f"  {label}", escape(str(value) or "-"))
    console.print(table, highlight=False)


def provenance_settings(key: Path | None, cert: Path | None) -> ProvenanceSettings:
    """``--provenance-key``/``--provenance-cert`` as settings (both or neither; the pair must
    sign); errors are printed naming the option, and exit 2."""
    try:
        return ProvenanceSettings(signer_key=key, certificate_chain=cert)
    except ValidationError as e:
        first = e.errors()[0]
        option = _OPTIONS.get(str(first["loc"][0]) if first["loc"] else "")
        print_error(f"{option or '--provenance-key/--provenance-cert'}: {first['msg']}")
        raise typer.Exit(code=2) from e


def register(app: typer.Typer) -> None:
    """Add the ``provenance`` command."""
    app.command("provenance")(provenance)
