"""Closed-form concept erasure: UCE's edit of the cross-attention keys and values, with an
ESD-style push past the anchor and RECE's adversarial rounds, solved in seconds on a CPU from
the model's own text encoder (no data, no training) and written as an adapter file.

``erase(ClosedFormConfig(...), out=...)`` is the Python API, ``safety-lora erase`` the CLI;
policy files may name concepts instead of a file (``steering.adapters: [{closed_form: ...}]``)
and the wrapper solves them at start-up (:mod:`safety_lora.closed_form.cache`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safety_lora.closed_form.config import ClosedFormConfig

if TYPE_CHECKING:
    from safety_lora.closed_form.cache import SolvedAdapter, cache_dir, solved_adapter
    from safety_lora.closed_form.files import ErasureResult, erase
    from safety_lora.closed_form.solve import ClosedFormEdit, solve

__all__ = [
    "ClosedFormConfig",
    "ClosedFormEdit",
    "ErasureResult",
    "SolvedAdapter",
    "cache_dir",
    "erase",
    "solve",
    "solved_adapter",
]

_LAZY = {
    "ClosedFormEdit": "solve",
    "solve": "solve",
    "ErasureResult": "files",
    "erase": "files",
    "SolvedAdapter": "cache",
    "cache_dir": "cache",
    "solved_adapter": "cache",
}


def __getattr__(name: str) -> Any:
    # The solver imports torch: load it on first use, so policy files validate without it.
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"safety_lora.closed_form.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'safety_lora.closed_form' has no attribute {name!r}")
