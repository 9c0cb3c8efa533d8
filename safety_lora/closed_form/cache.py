"""Closed-form edits solved when a pipeline is wrapped, cached on disk by what they read.

The cache key is :func:`~safety_lora.closed_form.files.edit_key`: the solver version, the
policy entry's settings, and the bytes of every text state and weight the solve reads, so a
changed model (text encoder, UNet key/value weights) or entry never reuses a stale edit.
Files live in ``$SAFETY_LORA_CACHE`` (default ``$XDG_CACHE_HOME/safety-lora``, else
``~/.cache/safety-lora``) under ``closed-form/<key>.safetensors``, written atomically; a file
that does not carry its key is solved again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.closed_form.files import base_metadata, edit_key, write_edit
from safety_lora.closed_form.solve import solve_inputs
from safety_lora.closed_form.states import gather

__all__ = ["SolvedAdapter", "cache_dir", "solved_adapter"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SolvedAdapter:
    """A cached closed-form adapter file, its key, whether it was reused, and its SVD error."""

    path: Path
    key: str
    reused: bool
    seconds: float
    svd_error: float


def cache_dir() -> Path:
    """``$SAFETY_LORA_CACHE``, else ``$XDG_CACHE_HOME/safety-lora``, else ``~/.cache/…``."""
    explicit = os.environ.get("SAFETY_LORA_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "safety-lora"


def _cached_error(path: Path, key: str) -> float | None:
    """The cached file's SVD error when it carries ``key``; None when unreadable or not it."""
    try:
        with safe_open(str(path), framework="pt") as fh:  # type: ignore[no-untyped-call]
            meta = fh.metadata() or {}
        if meta.get("safety_lora.solve_key") != key:
            return None
        return float(meta.get("safety_lora.svd_error", "0"))
    except (SafetensorError, OSError, ValueError):
        return None


def solved_adapter(
    pipe: Any, config: ClosedFormConfig, *, cache: str | Path | None = None
) -> SolvedAdapter:
    """The adapter file of ``config`` solved on ``pipe``: from the cache, or solved now.

    Attack-hardened edits (``attack_rounds``) are made offline and named as files instead.
    """
    if config.attack_rounds:
        raise ValueError(
            f"closed-form `attack_rounds` {config.attack_rounds} are not solved at start-up; "
            f"make the edit with `safety-lora erase --attack-rounds` and load it as a file"
        )
    began = time.perf_counter()
    inputs = gather(pipe, config.pairs(), config.preserve)
    key = edit_key(inputs, config)
    path = Path(cache or cache_dir()) / "closed-form" / f"{key}.safetensors"
    if path.is_file():
        error = _cached_error(path, key)
        if error is not None:
            return SolvedAdapter(path, key, True, time.perf_counter() - began, error)
        logger.warning("cached closed-form edit %s is unreadable or not its key; solving", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edit = solve_inputs(inputs, config)
    name = str((getattr(pipe, "config", None) or {}).get("_name_or_path") or type(pipe).__name__)
    result = write_edit(edit, path, key=key, base=base_metadata(pipe, name))
    seconds = time.perf_counter() - began
    return SolvedAdapter(path, key, False, seconds, result.overall_error)
