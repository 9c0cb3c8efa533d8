"""``safety-lora inspect FILE`` and ``safety-lora convert IN OUT --to ...``: adapter files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from safety_lora.console import print_error

if TYPE_CHECKING:  # the adapters package imports torch: only on use, keeping --help fast
    from safety_lora.adapters.names import ModuleIndex

#: Metadata keys that identify the base model an adapter was trained on.
FINGERPRINT_KEYS = (
    "safety_lora.base",
    "safety_lora.base_fingerprint",
    "safety_lora.base_model",
    "base_model",
    "ss_sd_model_hash",
    "ss_new_sd_model_hash",
    "ss_sd_model_name",
    "modelspec.architecture",
)


_BASE_HELP = "diffusers UNet folder (its config.json): resolves module names and conv shapes."


def _index(base: Path | None) -> ModuleIndex | None:
    from safety_lora.adapters.names import config_index

    return None if base is None else config_index(base)


#: What ``inspect --base`` says about the recorded base fingerprint, by outcome.
FINGERPRINT_VERDICTS = {
    "matches": "the fingerprint matches: trained on these weights",
    "differs": "the fingerprint differs: trained on other weights of this architecture",
    "not recorded": "no fingerprint recorded in the file",
    "no weights": "--base has no diffusion_pytorch_model.safetensors to fingerprint",
    "unreadable weights": "--base's diffusion_pytorch_model.safetensors is not readable",
}


def _fingerprint_check(metadata: dict[str, str], base: Path) -> str:
    """Whether ``safety_lora.base_fingerprint`` is the fingerprint of ``base``'s UNet weights
    (as stored, or in float32, the dtype the trainer runs in): a key of FINGERPRINT_VERDICTS.
    """
    import torch
    from safetensors import SafetensorError

    from safety_lora.adapters.fingerprint import weights_fingerprint

    recorded = metadata.get("safety_lora.base_fingerprint")
    if recorded is None:
        return "not recorded"
    folder = base / "unet" if (base / "unet").is_dir() else base
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return "no weights"
    try:
        found = {weights_fingerprint(weights), weights_fingerprint(weights, torch.float32)}
    except (SafetensorError, OSError):
        return "unreadable weights"
    return "matches" if recorded in found else "differs"


def _summary(path: Path, base: Path | None) -> dict[str, Any]:
    """What the file holds; with ``base``, its names resolved and every shape checked there."""
    from safety_lora.adapters import AdapterFormatError, check_fits, read_adapter
    from safety_lora.adapters.loading import sha256_of
    from safety_lora.adapters.names import ModuleIndex, config_unet

    unet = None if base is None else config_unet(base)
    state, fmt = read_adapter(path, unet=None if unet is None else ModuleIndex.from_model(unet))
    if unet is not None:
        try:
            check_fits(unet, state)  # the first module that does not fit, with both shapes
        except AdapterFormatError as e:
            raise AdapterFormatError(f"{str(path)!r} does not fit --base {base}: {e}") from e
    ranks = Counter(state.rank(p) or "full-rank" for p in state.modules)
    alphas = Counter(state.modules[p].alpha for p in state.modules)
    return {
        "file": str(path),
        "sha256": sha256_of(path),
        "format": fmt,
        "family": state.family,
        "denoiser": state.denoiser,
        "rank": {str(k): v for k, v in ranks.items()},
        "alpha": {str(k): v for k, v in alphas.items()},
        "modules": len(state.modules),
        "targets": sorted(state.modules),
        "parameters": state.parameter_count(),
        "text_encoders": {
            c: {"modules": len(part.modules), "parameters": part.parameter_count()}
            for c, part in state.text_encoders.items()
        },
        "base_model": {k: state.metadata[k] for k in FINGERPRINT_KEYS if k in state.metadata},
        "fits_base": None if base is None else str(base),
        "base_fingerprint": None if base is None else _fingerprint_check(state.metadata, base),
        "metadata": state.metadata,
    }


def inspect(
    file: Annotated[Path, typer.Argument(help="Adapter file (.safetensors).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    base: Annotated[Path | None, typer.Option("--base", help=_BASE_HELP)] = None,
    screen: Annotated[
        bool,
        typer.Option(
            "--screen",
            help="Also measure how far it moves the model toward each concept --policy erases.",
        ),
    ] = False,
    policy: Annotated[
        str, typer.Option("--policy", help="Policy file or preset name (with --screen).")
    ] = "balanced",
) -> None:
    """Show an adapter's format, family, rank, alpha, target layers, size and metadata.

    With --screen, load it onto the model (--base, else the embedded model) and measure its
    shift toward every concept the policy's steering erases, as wrapping a pipeline holding
    it would; exit 1 when the policy's steering.user_adapters rule would refuse it.
    """
    from safety_lora.adapters import AdapterFormatError

    try:
        info = _summary(file, base)
        if screen:
            info["screening"] = _screening(file, base, policy)
    except (AdapterFormatError, OSError, ValueError) as e:
        print_error(f"{e}")
        raise typer.Exit(code=1) from e
    refused = bool(info.get("screening", {}).get("refused"))
    if as_json:
        typer.echo(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_summary(file, info)
    if screen and not as_json:
        _print_screening(info["screening"])
    if refused:
        raise typer.Exit(code=1)


def _print_summary(file: Path, info: dict[str, Any]) -> None:
    table = Table(title=str(file), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")

    def counts(c: dict[str, int]) -> str:
        return ", ".join(f"{k} ({n} modules)" for k, n in c.items())

    table.add_row("format", info["format"])
    table.add_row("family", info["family"])
    table.add_row("denoiser", info["denoiser"])
    table.add_row("rank", counts(info["rank"]))
    table.add_row("alpha", counts(info["alpha"]))
    table.add_row("parameters", f"{info['parameters']:,}")
    text = info["text_encoders"]
    table.add_row(
        "text encoders",
        ", ".join(f"{c} ({t['modules']} modules, {t['parameters']:,} parameters)"
                  for c, t in text.items()) or f"none ({info['denoiser']} only)",
    )  # fmt: skip
    table.add_row("sha256", info["sha256"])
    fingerprint = info["base_model"]
    recorded = ", ".join(f"{k}={v}" for k, v in fingerprint.items())
    table.add_row("base model", recorded or "(not recorded)")
    if info["fits_base"] is not None:
        verdict = FINGERPRINT_VERDICTS[info["base_fingerprint"]]
        table.add_row(
            "fits --base", f"yes: every module and shape of {info['fits_base']}; {verdict}"
        )
    table.add_row(f"targets ({info['modules']})", "\n".join(info["targets"]))
    for key, value in sorted(info["metadata"].items()):
        table.add_row(f"meta: {key}", value if len(value) <= 200 else value[:200] + "…")
    Console().print(table)


def _screening(file: Path, base: Path | None, policy_name: str) -> dict[str, Any]:
    """The screen of ``file`` against ``policy_name``'s concepts, and the rule's verdict."""
    from safety_lora.adapters import load_adapter
    from safety_lora.loading import load_pipeline
    from safety_lora.policies.schema import Policy, UserAdapterRule
    from safety_lora.steering.screening import policy_probes
    from safety_lora.steering.screening import screen as run_screen

    policy = Policy.load(policy_name)
    pipe, _ = load_pipeline(str(base) if base is not None else None)
    name = "screened"
    load_adapter(pipe.unet, file, adapter_name=name, unet_only=True)
    rule = policy.steering.user_adapters or UserAdapterRule()
    result = run_screen(pipe, name, policy_probes(policy.steering), measure=rule.measure)
    worst = result.worst
    over = worst is not None and worst.shift >= rule.max_shift
    return {
        **result.to_dict(),
        "policy": policy.name,
        "max_shift": rule.max_shift,
        "action": rule.action if over else "allow",
        "refused": over and rule.action == "refuse",
    }


def _print_screening(screening: dict[str, Any]) -> None:
    title = f"screening against policy {screening['policy']} ({screening['measure']} measure)"
    table = Table(title=title)
    for column in ("concept", "shift", "worst probe", "its shift"):
        table.add_column(column, justify="left" if column != "shift" else "right")
    for row in screening["shifts"]:
        table.add_row(
            row["concept"], f"{row['shift']:.3f}", row["worst_probe"], f"{row['worst']:.3f}"
        )
    Console().print(table)
    if screening["unread_layers"]:
        Console().print(
            f"{screening['unread_layers']} of the adapter's layers are outside cross-attention "
            f"keys and values, which this measure reads (set the policy's "
            f"steering.user_adapters.measure to denoiser to read every layer)",
            highlight=False,
        )
    Console().print(
        f"max_shift {screening['max_shift']}: [bold]{screening['action']}[/bold] "
        f"({screening['seconds']:.1f} s)",
        highlight=False,
    )


def convert_cmd(
    source: Annotated[Path, typer.Argument(help="Adapter file to read.")],
    target: Annotated[Path, typer.Argument(help="Where to write (.safetensors).")],
    to: Annotated[str, typer.Option("--to", help="Target format: kohya, peft or lycoris.")],
    approximate: Annotated[
        bool,
        typer.Option("--approximate", help="Allow an SVD approximation (LoHa/LoKr/full to LoRA)."),
    ] = False,
    rank: Annotated[
        int | None, typer.Option("--rank", min=1, help="SVD rank (default: the source rank).")
    ] = None,
    base: Annotated[Path | None, typer.Option("--base", help=_BASE_HELP)] = None,
) -> None:
    """Convert an adapter file; exact where the target can hold it, else an error or an SVD."""
    from safety_lora.adapters import AdapterFormatError, FormatName, convert

    if to not in ("kohya", "peft", "lycoris"):
        print_error(f"--to must be kohya, peft or lycoris, got {to!r}")
        raise typer.Exit(code=2)
    fmt: FormatName = to  # type: ignore[assignment]
    try:
        report = convert(
            source, target, to=fmt, approximate=approximate, rank=rank, unet=_index(base)
        )
    except AdapterFormatError as e:
        print_error(f"{e}")
        raise typer.Exit(code=1) from e
    kind = "exact" if report.exact else f"approximate, relative error {report.overall_error:.3e}"
    Console().print(
        f"[green]✓[/green] {source} ({report.source_format}, {report.source_family}) -> "
        f"{target} ({report.target_format}, {report.target_family}): {report.modules} modules, "
        f"{kind}",
        highlight=False,
        soft_wrap=True,
    )
    if not report.exact:
        worst = sorted(report.module_errors.items(), key=lambda kv: -kv[1])[:5]
        for path, value in worst:
            Console().print(f"  {value:.3e}  {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``inspect`` and ``convert`` commands."""
    app.command("inspect")(inspect)
    app.command("convert")(convert_cmd)
