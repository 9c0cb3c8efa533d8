"""The steering methods a policy can name, one registry: what each puts on the pipeline.

A policy's ``steering`` section lists methods; :class:`~safety_lora.steering.Steering` owns
them on a pipeline. Three kinds exist:

* **adapter methods** end as an adapter file on the denoiser: a file the policy names
  (``file``) or a closed-form edit solved for this model at start-up and cached
  (``closed_form``). :data:`ADAPTER_SOURCES` maps each spec type to the function that yields
  its file, pin and provenance;
* **guidance** (``sld``): Safe Latent Diffusion, a hook installed for one call at that
  call's strength (:mod:`safety_lora.steering.sld`);
* **text** (``embedding``): the prompt's text embedding steered away from concepts before
  the denoiser, for one call at that call's strength (:mod:`safety_lora.steering.embedding`).

The workbench (``compare``, ``attack``) builds its targets with :func:`single`, so what it
measures is exactly what a policy ships.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from safety_lora.adapters import AdapterIntegrityError
from safety_lora.policies.schema import (
    AdapterSpec,
    ClosedFormSpec,
    SLDGuidance,
    SteeringPolicy,
    TextSteering,
)
from safety_lora.taxonomy import Category

__all__ = [
    "ADAPTER_SOURCES",
    "AdapterFile",
    "Method",
    "adapter_file",
    "embedding_method",
    "file_method",
    "single",
    "sld_method",
]

logger = logging.getLogger(__name__)

#: One steering method of a policy.
Method = AdapterSpec | ClosedFormSpec | SLDGuidance | TextSteering


@dataclass(frozen=True)
class AdapterFile:
    """The file an adapter method loads, its sha256 pin, and its closed-form solve key."""

    path: Path
    pin: str | None = None
    solve_key: str | None = None


def _named_file(pipe: Any, spec: AdapterSpec) -> AdapterFile:
    """The policy's own file (safetensors only), pinned when the policy pins it."""
    if spec.path.suffix != ".safetensors":
        raise AdapterIntegrityError(
            f"steering adapter {str(spec.path)!r}: only .safetensors files are loaded"
        )
    return AdapterFile(spec.path, spec.sha256)


def _closed_form_file(pipe: Any, spec: ClosedFormSpec) -> AdapterFile:
    """The closed-form edit solved for ``pipe``'s model (or reused from the cache)."""
    from safety_lora.closed_form.cache import solved_adapter

    config = spec.closed_form
    solved = solved_adapter(pipe, config)
    logger.info(
        "closed-form adapter %s: %s in %.2f s, SVD error %.3g (%s)",
        spec.adapter_name,
        "reused" if solved.reused else "solved",
        solved.seconds,
        solved.svd_error,
        solved.path,
    )
    if config.tolerance is not None and solved.svd_error > config.tolerance:
        logger.warning(
            "closed-form adapter %s: rank %s holds the edit only to a relative error of "
            "%.3g (tolerance %.3g); raise `rank` (or omit rank and tolerance for the exact "
            "delta)",
            spec.adapter_name,
            config.rank,
            solved.svd_error,
            config.tolerance,
        )
    return AdapterFile(solved.path, None, solved.key)


#: Adapter method (policy spec type) -> the function that yields its file for a pipeline.
ADAPTER_SOURCES: dict[type, Callable[[Any, Any], AdapterFile]] = {
    AdapterSpec: _named_file,
    ClosedFormSpec: _closed_form_file,
}


def adapter_file(pipe: Any, spec: AdapterSpec | ClosedFormSpec) -> AdapterFile:
    """The file ``spec`` puts on ``pipe``'s denoiser, by the registry."""
    return ADAPTER_SOURCES[type(spec)](pipe, spec)


def single(method: Method, *, mode: Literal["dynamic", "fused"] = "dynamic") -> SteeringPolicy:
    """A steering section holding ``method`` alone: how the workbench steers with one method."""
    if isinstance(method, SLDGuidance):
        return SteeringPolicy(guidance=method, mode=mode)
    if isinstance(method, TextSteering):
        return SteeringPolicy(text=method, mode=mode)
    return SteeringPolicy(adapters=[method], mode=mode)


def file_method(path: Path, *, name: str, strength: float = 1.0) -> AdapterSpec:
    """An adapter file as one policy entry, at rest at ``strength`` (for every category: on
    its own, a method steers whatever it is asked to)."""
    return AdapterSpec(path=path, name=name, scale=strength, categories=list(Category))


def sld_method(
    concept: str, *, preset: str = "medium", strength: float = 1.0, name: str = "sld"
) -> SLDGuidance:
    """SLD guidance away from ``concept`` as one policy entry, at rest at ``strength``."""
    return SLDGuidance(
        name=name,
        concepts=[concept],
        preset=preset,  # type: ignore[arg-type]
        scale=strength,
        categories=list(Category),
    )


def embedding_method(
    concept: str, *, anchor: str = "", strength: float = 1.0, name: str = "embedding"
) -> TextSteering:
    """Text-embedding steering of ``concept`` toward ``anchor`` as one policy entry, at rest at
    ``strength``."""
    return TextSteering(
        name=name, concepts=[concept], anchor=anchor, scale=strength, categories=list(Category)
    )
