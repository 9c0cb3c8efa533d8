"""``safety-lora serve``: the HTTP service; ``safety-lora serve hash-key``: make a key's hash."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from safety_lora.audit import AuditWriteError
from safety_lora.console import print_error
from safety_lora.policies.schema import PolicyError
from safety_lora.service.settings import ServiceSettings, hash_api_key

serve_app = typer.Typer(
    help="Run the HTTP service (needs the serve extra).",
    invoke_without_command=True,
    no_args_is_help=False,
)


@serve_app.callback()
def serve(
    ctx: typer.Context,
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="Policy file or preset name.")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="diffusers pipeline folder (default: embedded model)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    api_key_hash: Annotated[
        list[str] | None,
        typer.Option("--api-key-hash", help="sha256 of an accepted API key (repeatable)."),
    ] = None,
    audit_log: Annotated[
        Path | None, typer.Option("--audit-log", help="Audit log file (JSONL).")
    ] = None,
    no_generation: Annotated[
        bool, typer.Option("--no-generation", help="Moderation only; no model is loaded.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings file (YAML/JSON).")
    ] = None,
    ray: Annotated[
        bool,
        typer.Option("--ray", help="Serve on Ray Serve (the ray extra): same routes, scaled out."),
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(help="With --ray: a running cluster to join (auto, ray://HOST:10001)."),
    ] = None,
) -> None:
    """Serve generation and moderation over HTTP; without API keys only on loopback."""
    if ctx.invoked_subcommand is not None:
        return
    overrides = {
        "policy": policy,
        "model": model,
        "host": host,
        "port": port,
        "api_keys": api_key_hash or None,
        "audit_path": audit_log,
        "generation": False if no_generation else None,
    }
    if address is not None and not ray:
        _fail("--address joins a Ray cluster: give --ray too")
    try:
        settings = _settings(config, overrides)
        if ray:
            try:
                from safety_lora.service.ray_app import serve_on_ray
            except ModuleNotFoundError as e:
                hint = 'pip install "safety-lora[ray]"'
                raise ImportError(f"--ray needs the ray extra: {hint} ({e.name} is missing)") from e
            serve_on_ray(settings, address=address)
        else:
            from safety_lora.service import serve as run

            run(settings)
    except AuditWriteError as e:
        _fail(f"{e}: give a writable file (--audit-log, audit_path or the policy's audit.path)")
    except (ValueError, PolicyError, ImportError, RuntimeError) as e:
        _fail(str(e))


def _settings(config: Path | None, overrides: dict[str, Any]) -> ServiceSettings:
    if config is not None:
        return ServiceSettings.from_file(config, **overrides)
    return ServiceSettings.from_dict({k: v for k, v in overrides.items() if v is not None})


def _fail(message: str) -> NoReturn:
    print_error(f"{message}", mark="error:")
    raise typer.Exit(code=2)


@serve_app.command("ray-config")
def ray_config(
    out: Annotated[Path, typer.Option("--out", "-o", help="Serve config file to write (YAML).")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Settings file (YAML/JSON).")
    ] = None,
    policy: Annotated[
        str | None, typer.Option("--policy", "-p", help="Policy file or preset name.")
    ] = None,
) -> None:
    """Write the Ray Serve config a cluster deploys (serve deploy FILE)."""
    import yaml

    try:
        settings = _settings(config, {"policy": policy})
        from safety_lora.service.ray_settings import serve_config

        text = yaml.safe_dump(serve_config(settings), sort_keys=False)
    except (ValueError, PolicyError) as e:
        _fail(str(e))
    out.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {out}: deploy it with `serve deploy {out}`")


@serve_app.command("hash-key")
def hash_key(
    new: Annotated[bool, typer.Option("--new", help="Generate a fresh random key too.")] = False,
) -> None:
    """Print the sha256 hash to configure for an API key (read from stdin or a prompt)."""
    if new:
        key = secrets.token_urlsafe(32)
        typer.echo(f"key:  {key}")
    elif sys.stdin.isatty():
        key = typer.prompt("API key", hide_input=True)
    else:
        key = sys.stdin.read().strip()
    try:
        typer.echo(f"hash: {hash_api_key(key)}" if new else hash_api_key(key))
    except ValueError as e:
        _fail(str(e))


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command group."""
    app.add_typer(serve_app, name="serve")
