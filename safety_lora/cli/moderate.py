"""``safety-lora moderate``: judge existing images and prompts with a policy."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from safety_lora.audit import AuditWriteError
from safety_lora.console import print_error
from safety_lora.guard import SafetyGuard
from safety_lora.image_codec import DEFAULT_MAX_PIXELS, open_image_file
from safety_lora.policies.schema import Policy, PolicyError
from safety_lora.review.errors import ReviewError
from safety_lora.textfiles import TextFileError, read_text

BATCH = 16


def iter_files(paths: list[Path]) -> Iterator[Path]:
    """Files as given, folders expanded (recursively, sorted) to every file in them; which of
    them are images is decided by their content as well as their name (see
    :func:`_plainly_not_an_image`), so no image is skipped for its name."""
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.exists():
            yield path
        else:
            raise typer.BadParameter(f"{path}: no such file or folder", param_hint="PATH")


def read_prompts_csv(path: Path) -> list[str]:
    """The ``prompt`` column of a UTF-8 CSV file; errors name the file, the line and why."""
    try:
        text = read_text(path)
    except TextFileError as e:
        raise typer.BadParameter(str(e), param_hint="--prompts") from e
    reader = csv.DictReader(io.StringIO(text, newline=""))
    line = 1  # where the record being read starts
    try:
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise typer.BadParameter(
                f"{path}: needs a 'prompt' column, found {reader.fieldnames}",
                param_hint="--prompts",
            )
        prompts = []
        line = reader.line_num + 1
        for row in reader:
            prompts.append(row["prompt"])
            line = reader.line_num + 1
        return prompts
    except csv.Error as e:
        raise typer.BadParameter(f"{path}: line {line}: {e}", param_hint="--prompts") from e


def _top(scores: dict[str, float], k: int = 3) -> str:
    best = sorted(scores.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{c} {s:.2f}" for c, s in best if s > 0) or "-"


def moderate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Image files or folders of images.")
    ] = None,
    policy: Annotated[
        str, typer.Option("--policy", "-p", help="Policy file or preset name.")
    ] = "balanced",
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="A prompt to check (repeatable).")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="CSV file with a 'prompt' column.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines, not a table.")] = False,
    max_image_pixels: Annotated[
        int,
        typer.Option(
            "--max-image-pixels",
            min=64,
            help="Pixels one image file may hold, all its frames, pages, layers and icon sizes "
            "together (sized from the headers, before decoding); a file over it is refused.",
        ),
    ] = DEFAULT_MAX_PIXELS,
    ray: Annotated[
        bool,
        typer.Option(
            "--ray",
            help="Batch job on Ray Data (the ray extra): PATH is a folder of images or a "
            ".parquet/.csv of prompts; results go to --out; resumable.",
        ),
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="With --ray: the results (.parquet).")
    ] = None,
    actors: Annotated[
        int, typer.Option(min=1, help="With --ray: judge actors (each holds the classifiers).")
    ] = 2,
    address: Annotated[
        str | None, typer.Option(help="With --ray: a running cluster to join (auto, ray://...).")
    ] = None,
) -> None:
    """Judge images and prompts; exit status 1 when anything is not allowed (or unreadable).

    Files in a folder that are plainly not images (neither an image's name nor an image's
    content, like a ``decisions.json`` beside generated images) are skipped and counted; a
    file that claims to be an image and cannot be read is refused.
    """
    console = Console(stderr=as_json)
    try:
        loaded = Policy.load(policy)
        if ray:
            _moderate_on_ray(list(paths or []), loaded, out, actors=actors, address=address)
            return
        guard = SafetyGuard(loaded)
        if guard.engine.audit_log is not None:
            guard.engine.audit_log.check()  # before any work, not after the first verdict
    except (PolicyError, ImportError, ValueError, AuditWriteError, ReviewError) as e:
        print_error(f"{e}", mark="error:")
        raise typer.Exit(code=2) from e
    texts = list(prompt or []) + (read_prompts_csv(prompts) if prompts else [])
    found = list(iter_files(list(paths or [])))
    files = [p for p in found if not _plainly_not_an_image(p)]
    if not texts and not files:
        raise typer.BadParameter("give image PATHs, --prompt or --prompts")
    try:
        rows = [_prompt_row(guard, text) for text in texts]
        rows += _image_rows(guard, files, console, max_pixels=max_image_pixels)
    except (AuditWriteError, ReviewError) as e:  # no verdict shown that is not kept
        print_error(f"{e}", mark="error:")
        raise typer.Exit(code=2) from e
    if len(files) < len(found):
        skipped = [p.name for p in found if p not in files]
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        Console(stderr=True).print(
            f"skipped {len(skipped)} {_plural(len(skipped), 'file')} that "
            f"{'is' if len(skipped) == 1 else 'are'} not an image: {shown}",
            highlight=False,
        )
    _print_rows(rows, guard.policy.name, console, as_json=as_json)
    held = [row for row in rows if row.get("review_id")]
    if held:  # the ids a reviewer decides (the reviewer page, or ReviewQueue.decide)
        console.print(
            f"held {len(held)} {_plural(len(held), 'image')} for review: "
            + ", ".join(f"{row['item']} -> {row['review_id']}" for row in held),
            highlight=False,
            soft_wrap=True,
        )
    if any(row["action"] not in ("allow", "steer") for row in rows):
        raise typer.Exit(code=1)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _plainly_not_an_image(path: Path) -> bool:
    """Neither an image file's name nor an image's header: skipped, not judged."""
    if path.suffix.lower() in Image.registered_extensions():
        return False
    try:
        with path.open("rb") as file:
            if file.read(4) == b"\0\0\1\0":
                return False  # an icon's header: not opened here, as opening decodes
            file.seek(0)
            with Image.open(file, formats=[f for f in Image.OPEN if f != "ICO"]):
                return False  # the content says image, whatever the name
    except UnidentifiedImageError:
        return True
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False  # an image's header that does not decode: refused when judged


def _prompt_row(guard: SafetyGuard, text: str) -> dict[str, Any]:
    """One prompt's verdict (audited, as the service and the middleware do)."""
    return {"kind": "prompt", "item": text, **guard.check_prompt(text).to_dict()}


def _image_rows(
    guard: SafetyGuard, files: list[Path], console: Console, *, max_pixels: int
) -> list[dict[str, Any]]:
    """Every image's verdict, in batches; an unreadable one, or one over ``max_pixels`` in all
    its images, is a row of its own (refused) and the others are still judged."""
    rows: list[dict[str, Any]] = []
    with Progress(console=console, transient=True, disable=not files) as progress:
        task = progress.add_task("judging images", total=len(files))
        for start in range(0, len(files), BATCH):
            batch_paths, images = [], []
            for path in files[start : start + BATCH]:
                try:
                    images.append(
                        open_image_file(path, max_pixels=max_pixels, setting="--max-image-pixels")
                    )
                    batch_paths.append(path)
                except (OSError, ValueError) as e:  # ImageDecodeError names what is wrong
                    rows.append(_unreadable(path, e))
            if images:
                # The guard judges every frame, gives `regenerate` its final action (there is
                # nothing to regenerate here) and audits, exactly as for the service.
                decisions = guard.review(images)
                for path, decision in zip(batch_paths, decisions, strict=True):
                    rows.append({"kind": "image", "item": str(path), **decision.to_dict()})
            progress.advance(task, len(files[start : start + BATCH]))
    return rows


def _unreadable(path: Path, error: Exception) -> dict[str, Any]:
    return {
        "kind": "image",
        "item": str(path),
        "action": "error",
        "rule": "unreadable image",
        "scores": {},
        "reasons": [f"{path}: {error}"],
    }


def _print_rows(rows: list[dict[str, Any]], name: str, console: Console, *, as_json: bool) -> None:
    """JSON lines, or a table with each row's action coloured and its top scores."""
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    table = Table(title=f"policy {name!r}")
    for column in ("kind", "item", "action", "rule", "top scores"):
        table.add_column(column, overflow="fold")
    colours = {"allow": "green", "steer": "yellow", "blur": "yellow", "regenerate": "yellow"}
    for row in rows:
        colour = colours.get(row["action"], "red")
        table.add_row(
            row["kind"],
            row["item"],
            f"[{colour}]{row['action']}[/{colour}]",
            row["rule"],
            _top(row["risk"] if row["kind"] == "prompt" else row["scores"]),
        )
    console.print(table)


def _moderate_on_ray(
    paths: list[Path], policy: Policy, out: Path | None, *, actors: int, address: str | None
) -> None:
    """``moderate --ray``: one source to a Parquet table; exit 1 when anything is flagged."""
    if len(paths) != 1 or out is None:
        raise typer.BadParameter("--ray takes one PATH (folder, .parquet or .csv) and --out FILE")
    if out.suffix.lower() != ".parquet":
        raise typer.BadParameter(f"--out {out}: write a .parquet file", param_hint="--out")
    try:
        import ray

        from safety_lora.ray_moderation import moderate_dataset
    except ModuleNotFoundError as e:
        raise ImportError(
            f'--ray needs the ray extra: pip install "safety-lora[ray]" ({e.name} is missing)'
        ) from e
    console = Console(stderr=True)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our bar, not Ray's plan lines
    ray.init(
        address=address,
        include_dashboard=False if address is None else None,
        logging_level=logging.WARNING,
    )
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("moderating", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            counts = moderate_dataset(paths[0], out, policy, actors=actors, on_progress=advance)
    finally:
        ray.shutdown()
    console.print(f"policy {policy.name!r}: {sum(counts.values())} rows -> {out}")
    table = Table()
    table.add_column("action")
    table.add_column("rows", justify="right")
    for action, n in sorted(counts.items()):
        table.add_row(action, str(n))
    console.print(table)
    if set(counts) - {"allow"}:
        raise typer.Exit(code=1)


def register(app: typer.Typer) -> None:
    """Add the ``moderate`` command."""
    app.command("moderate")(moderate)
