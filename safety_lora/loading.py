"""One way to load the pipeline a command runs on: a user's model, or the embedded one.

Every entry point that loads a model by name (the CLI's ``generate``, the service, ``erase``,
training, ``attack`` and ``compare``) goes through :func:`load_pipeline`, so they all sample a
model the same way by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_pipeline"]


def load_pipeline(
    base: str | Path | None = None, device: str = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """The pipeline ``base`` names (a diffusers folder or hub id) or, when None, the embedded
    concept-world model, on ``device`` with its progress bars off, and its sampling defaults.

    The defaults are the keyword arguments the model was measured at (the embedded model's
    steps and guidance); a user's model has none, so its pipeline's own defaults apply.
    """
    if base is None:
        from safety_lora.models import embedded_default

        pipe, defaults = embedded_default()
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(base)  # type: ignore[no-untyped-call]
        defaults = {}
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), dict(defaults)
