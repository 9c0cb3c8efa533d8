"""Models shipped inside the package: the concept-world pipeline, loaded offline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from safety_lora.concept_world.model import SAMPLING_DEFAULTS

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionPipeline

#: Folder of the shipped concept-world ``StableDiffusionPipeline`` (see its README.md).
CONCEPT_WORLD_DIR = Path(__file__).parent / "concept_world"
#: Sampling settings the shipped weights were measured at; pass them to the pipeline call.
CONCEPT_WORLD_DEFAULTS: dict[str, float | int] = dict(SAMPLING_DEFAULTS)

__all__ = ["CONCEPT_WORLD_DEFAULTS", "CONCEPT_WORLD_DIR", "concept_world", "embedded_default"]


def concept_world(
    *, device: str = "cpu", dtype: torch.dtype | None = None
) -> StableDiffusionPipeline:
    """The embedded concept-world text-to-image pipeline (32x32 images), without network.

    ``dtype`` defaults to float32. Sample with ``**CONCEPT_WORLD_DEFAULTS``.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    if not (CONCEPT_WORLD_DIR / "model_index.json").is_file():
        raise FileNotFoundError(f"concept_world: no shipped model at {CONCEPT_WORLD_DIR}")
    shown = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()  # 8.4 MB load in a blink: no bars for it
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            CONCEPT_WORLD_DIR,
            dtype=dtype or torch.float32,
            local_files_only=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    finally:
        if shown:
            diffusers_logging.enable_progress_bar()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def embedded_default() -> tuple[StableDiffusionPipeline, dict[str, float | int]]:
    """The model the CLI and the service use when given none, with its sampling settings.

    The model is tiny, and one torch thread runs it several times faster than many on a
    small CPU, so this also sets torch to one thread for the process.
    """
    import torch

    torch.set_num_threads(1)
    return concept_world(), dict(CONCEPT_WORLD_DEFAULTS)
