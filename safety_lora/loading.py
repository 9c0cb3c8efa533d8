"""One way to load the pipeline a command runs on: a user's model, or the embedded one.

Every entry point that loads a model by name (the CLI's ``generate``, the service, ``erase``,
training, ``attack`` and ``compare``) goes through :func:`load_pipeline`, so they all sample a
model the same way by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["PipelineLoadError", "check_source", "load_pipeline"]


class PipelineLoadError(ValueError):
    """A model could not be loaded; the message names it and says what to check."""


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
        check_source(base)
        pipe, defaults = _from_pretrained(str(base)), {}
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device), dict(defaults)


def check_source(base: str | Path) -> None:
    """Refuse, before anything loads, a model that cannot be loaded here: a local path that is
    not a pipeline folder, or a hub id while hub downloads are off (``HF_HUB_OFFLINE=1``)."""
    import os

    name = str(base)
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        if not (path / "model_index.json").is_file():
            what = "is not a diffusers pipeline folder (no model_index.json)"
            raise PipelineLoadError(
                f"cannot load the model {name!r}: it "
                + (what if path.is_dir() else "is not a folder that exists")
            )
    elif os.environ.get("HF_HUB_OFFLINE") == "1":
        raise PipelineLoadError(
            f"cannot load the model {name!r}: not a local folder, and hub downloads are off "
            f"(HF_HUB_OFFLINE=1); pass a local pipeline folder"
        )


def _from_pretrained(name: str) -> Any:
    """diffusers' loader (after :func:`check_source`), its error naming the model."""
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(name)  # type: ignore[no-untyped-call]
    except (OSError, ValueError) as e:
        what = (
            "a pipeline folder that could not be read"
            if Path(name).is_dir()
            else ("a hub id that could not be fetched")
        )
        raise PipelineLoadError(f"cannot load the model {name!r}: {what} ({e})") from e
