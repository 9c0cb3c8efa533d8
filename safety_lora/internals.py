"""The private parts of diffusers and peft the layer relies on, each behind one helper.

None of these is public API upstream; keeping every use here means an upgrade that changes
one breaks one function, and ``tests/test_internals.py`` checks each against the installed
versions so that such an upgrade fails loudly in CI rather than quietly in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["execution_device", "kronecker_split", "mark_peft_loaded", "without_safety_checker"]


def mark_peft_loaded(model: torch.nn.Module) -> None:
    """Tell a diffusers model that adapters were injected into it (the flag diffusers' own
    loader sets, ``_hf_peft_config_loaded``), so its ``set_adapters``/``delete_adapters`` work
    on adapters peft injected directly."""
    target: Any = model
    target._hf_peft_config_loaded = True


def kronecker_split(dimension: int, factor: int) -> tuple[int, int]:
    """How peft's LoKr splits ``dimension`` into two Kronecker factors under
    ``decompose_factor`` (its ``factorization`` helper)."""
    from peft.tuners.lokr.layer import factorization

    m, n = factorization(dimension, factor)
    return int(m), int(n)


def execution_device(pipe: Any) -> torch.device:
    """The device a diffusers pipeline runs its models on (``_execution_device``: the
    accelerator under CPU offload, where the models' own ``device`` says ``cpu``)."""
    return torch.device(pipe._execution_device)


@contextmanager
def without_safety_checker(pipe: Any) -> Iterator[None]:
    """The pipeline with its own ``safety_checker`` off for the block (the policy judges the
    images instead), restored after. Set on the instance, past ``DiffusionPipeline``'s
    ``__setattr__``, which would also rewrite the pipeline's config."""
    checker = pipe.__dict__.get("safety_checker")
    if checker is None:
        yield
        return
    object.__setattr__(pipe, "safety_checker", None)
    try:
        yield
    finally:
        object.__setattr__(pipe, "safety_checker", checker)
