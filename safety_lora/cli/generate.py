"""``safety-lora generate``: make images under a policy; write images, decisions and audit lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from safety_lora.console import print_error
from safety_lora.policies.schema import AdapterSpec, Policy, PolicyError
from safety_lora.taxonomy import Category

#: Categories an ``--adapter`` file is credited with (risk in any of them boosts it).
_ADAPTER_CATEGORIES: list[Category] = [c for c in Category if c is not Category.MINORS]


def _policy(name_or_path: str, adapters: list[Path], out: Path) -> Policy:
    policy = Policy.load(name_or_path)
    extra = [AdapterSpec(path=p.resolve(), categories=_ADAPTER_CATEGORIES) for p in adapters]
    steering = policy.steering.model_copy(update={"adapters": [*policy.steering.adapters, *extra]})
    audit = policy.audit
    if audit.path is None:
        audit = audit.model_copy(update={"path": (out / "audit.jsonl").resolve()})
    return policy.model_copy(update={"steering": steering, "audit": audit})


def generate(
    prompt: Annotated[str, typer.Argument(help="The text prompt.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for images, decisions.json, audit.")],
    policy: Annotated[
        str, typer.Option("--policy", help="Policy file or preset name.")
    ] = "balanced",
    model: Annotated[
        str | None, typer.Option("--model", help="Diffusers folder or hub id (default: embedded).")
    ] = None,
    adapter: Annotated[
        list[Path] | None, typer.Option("--adapter", help="Extra steering LoRA (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Generator seed.")] = 0,
    n: Annotated[int, typer.Option("-n", min=1, help="Images to generate.")] = 1,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Denoising steps (default: model's).")
    ] = None,
    guidance: Annotated[
        float | None, typer.Option("--guidance", help="Guidance scale (default: model's).")
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option("--image", help="Start from this image (image-to-image; judged first)."),
    ] = None,
    mask: Annotated[
        Path | None,
        typer.Option("--mask", help="Repaint only the white part of --image (inpainting)."),
    ] = None,
    strength: Annotated[
        float,
        typer.Option("--strength", min=0.01, max=1.0, help="How far from --image to go (0..1]."),
    ] = 0.8,
    provenance_key: Annotated[
        Path | None,
        typer.Option("--provenance-key", help="PEM key signing a C2PA manifest in each image."),
    ] = None,
    provenance_cert: Annotated[
        Path | None,
        typer.Option("--provenance-cert", help="PEM certificate chain of --provenance-key."),
    ] = None,
) -> None:
    """Generate N images for PROMPT under the policy and explain every decision.

    With --image (and --mask), edit that image instead: it is judged under the policy's
    `inputs` rules before anything is generated, and a refused input is a decision too.
    """
    import torch

    err = Console(stderr=True)
    if mask is not None and image is None:
        print_error("--mask needs --image (the image whose masked part is repainted)")
        raise typer.Exit(code=2)
    inputs = _read_inputs(image, mask)
    from safety_lora.cli.provenance import provenance_settings
    from safety_lora.provenance import generator_name, mark_image

    marking = provenance_settings(provenance_key, provenance_cert)  # no key: unsigned record
    out.mkdir(parents=True, exist_ok=True)
    try:
        chosen = _policy(policy, list(adapter or []), out)
    except PolicyError as e:
        print_error(f"{e}")
        raise typer.Exit(code=2) from e
    from safety_lora.loading import PipelineLoadError, load_pipeline

    try:
        pipe, defaults = load_pipeline(model)
    except PipelineLoadError as e:
        print_error(f"--model: {e}")
        raise typer.Exit(code=2) from e
    sampling = {**defaults}  # the model's own (a user's pipeline: its call's defaults)
    if steps is not None:
        sampling["num_inference_steps"] = steps
    if guidance is not None:
        sampling["guidance_scale"] = guidance
    shown_steps = int(sampling.get("num_inference_steps", 50))
    from safety_lora.adapters import AdapterFormatError, AdapterIntegrityError

    try:
        safe = _wrapped(pipe, chosen, inputs)
    except (AdapterFormatError, AdapterIntegrityError) as e:  # bad --adapter or policy file
        print_error(f"{e}")
        raise typer.Exit(code=1) from e
    if inputs:
        inputs["strength"] = strength
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err
    ) as progress:
        task = progress.add_task("generation 1", total=shown_steps)
        runs = [0]

        def on_step(p: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if step == 0:  # a new inner generation: the first attempt or a regeneration
                runs[0] += 1
                total = int(getattr(p, "num_timesteps", shown_steps) or shown_steps)
                progress.reset(task, total=total)
                progress.update(task, description=f"generation {runs[0]}")
            progress.advance(task)
            return tensors

        result = safe(
            prompt,
            num_images_per_prompt=n,
            **sampling,
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=on_step,
            **inputs,
        )
    records = []
    for i, (im, decision) in enumerate(zip(result.images, result.decisions, strict=True)):
        name = f"image_{i:03d}.png"
        marked = mark_image(
            im, decision, index=i, generator=generator_name(model), settings=marking
        )
        (out / name).write_bytes(marked)
        records.append({"file": name, **decision.to_dict()})
    (out / "decisions.json").write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    console = Console()
    for record in records:
        console.print(
            f"{record['file']}: [bold]{record['action']}[/bold] ({record['rule']}, "
            f"attempts {record['attempts']})",
            highlight=False,
        )
    images = "image" if len(records) == 1 else "images"
    console.print(f"wrote {len(records)} {images}, decisions.json and audit to {out}")


def _read_inputs(image: Path | None, mask: Path | None) -> dict[str, Any]:
    """``--image``/``--mask`` decoded (within the service's pixel budget), as call kwargs."""
    from safety_lora.image_codec import ImageDecodeError, open_image_file

    found: dict[str, Any] = {}
    for option, path, key in (("--image", image, "image"), ("--mask", mask, "mask_image")):
        if path is None:
            continue
        try:
            found[key] = open_image_file(path).convert("L" if key == "mask_image" else "RGB")
        except (ImageDecodeError, OSError) as e:
            print_error(f"{option} {path}: {e}")
            raise typer.Exit(code=2) from e
    return found


def _wrapped(pipe: Any, policy: Policy, inputs: dict[str, Any]) -> Any:
    """``pipe`` under ``policy``; with inputs, its image-to-image or inpainting form."""
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    from safety_lora.pipeline import SafePipeline

    safe = SafePipeline(pipe, policy)
    if not inputs:
        return safe
    mode = AutoPipelineForInpainting if "mask_image" in inputs else AutoPipelineForImage2Image
    edit = mode.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    return safe.derive(edit)


def register(app: typer.Typer) -> None:
    """Add the ``generate`` command."""
    app.command("generate")(generate)
