"""The methods compared, one small class each behind :class:`Method`.

Every method generates through one shared :class:`Sampler` (same pipeline, same sampling
settings, one ``torch.Generator`` per image seeded by that image's seed), so differences
between methods come from the method alone. A method's ``generate`` returns ``None`` for an
image it withholds (classifier-only blocks).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from safety_lora.internals import execution_device
from safety_lora.steering import Steering, embedding_method, file_method, single, sld_method
from safety_lora.workbench.compare.config import STRENGTHS

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "AdapterMethod",
    "BaseModel",
    "ClassifierOnly",
    "ConceptCheck",
    "Method",
    "NegativePrompt",
    "SLDMethod",
    "Sampler",
    "TextEmbeddingMethod",
]


class Method(Protocol):
    """A way to keep a concept out of generated images."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def strengths(self) -> tuple[float, ...]: ...

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], strength: float
    ) -> list[Image | None]: ...


class ConceptCheck(Protocol):
    """Says whether each image shows the concept (classifier-only blocks those that do)."""

    def shows(self, images: Sequence[Image]) -> list[bool]: ...


@dataclass
class Sampler:
    """The pipeline and the sampling settings every method shares."""

    pipe: Any
    num_inference_steps: int
    guidance_scale: float
    batch_size: int = 32
    extra: dict[str, Any] = field(default_factory=dict)

    def sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        negative_prompt: str | None = None,
    ) -> list[Image]:
        """One image per (prompt, seed), in batches of ``batch_size``."""
        if len(prompts) != len(seeds):
            raise ValueError(f"sample: {len(prompts)} prompts but {len(seeds)} seeds")
        device = execution_device(self.pipe)
        images: list[Image] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = list(prompts[start : start + self.batch_size])
            gens = [
                torch.Generator(device).manual_seed(int(s))
                for s in seeds[start : start + self.batch_size]
            ]
            extra = dict(self.extra)
            if negative_prompt is not None:  # PixArt breaks on an explicit None
                extra["negative_prompt"] = [negative_prompt] * len(batch)
            if "use_resolution_binning" in _parameters(self.pipe):
                # PixArt: compare samples at the model's own size, its bin when it has one
                extra.setdefault("use_resolution_binning", False)
            if negative_prompt is not None and "true_cfg_scale" in _parameters(self.pipe):
                # Flux: guidance_scale is an embedding; a negative prompt acts only through
                # true classifier-free guidance, at the same scale here.
                extra["true_cfg_scale"] = self.guidance_scale
            out = self.pipe(
                batch,
                num_inference_steps=self.num_inference_steps,
                guidance_scale=self.guidance_scale,
                generator=gens,
                **extra,
            )
            images.extend(out.images)
        return images


def _parameters(pipe: Any) -> Mapping[str, Any]:
    """The keyword arguments ``pipe(...)`` accepts."""
    return inspect.signature(pipe.__call__).parameters


@dataclass
class BaseModel:
    """The unmodified model; its images are kept, so classifier-only reuses them."""

    sampler: Sampler
    name: str = "base"
    kind: str = "base"
    strengths: tuple[float, ...] = (0.0,)
    _images: dict[tuple[tuple[str, ...], tuple[int, ...]], list[Image]] = field(
        default_factory=dict, repr=False
    )

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], strength: float
    ) -> list[Image | None]:
        key = (tuple(prompts), tuple(seeds))
        if key not in self._images:
            self._images[key] = self.sampler.sample(prompts, seeds)
        return list(self._images[key])


@dataclass
class AdapterMethod:
    """A steering adapter file (any format the project reads) at a strength, owned by the
    runtime's :class:`~safety_lora.steering.Steering` as a policy's file entry would be.

    ``load()`` puts it on the denoiser as ``adapter_name``; ``unload()`` removes it (and peft's
    wrappers when no adapter is left, so a trainer finds the bare modules again).
    """

    sampler: Sampler
    path: Path
    name: str
    kind: str = "adapter"
    strengths: tuple[float, ...] = STRENGTHS
    adapter_name: str = "compare"
    _lazy: bool = field(default=False, repr=False)
    _steering: Steering | None = field(default=None, repr=False)

    def load(self) -> Steering:
        method = file_method(self.path, name=self.adapter_name)
        self._steering = Steering(self.sampler.pipe, single(method))
        return self._steering

    def unload(self) -> None:
        if self._steering is not None:
            self._steering.close()
            self._steering = None

    @contextmanager
    def loaded_lazily(self) -> Iterator[None]:
        """Inside the block, the first :meth:`generate` loads the file; unloaded at the end
        (so a block whose units are all cached never reads it)."""
        self._lazy = True
        try:
            yield
        finally:
            self._lazy = False
            self.unload()

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], strength: float
    ) -> list[Image | None]:
        steering = self._steering
        if steering is None:
            if not self._lazy:
                raise RuntimeError(f"{self.name}: call load() (or use loaded_lazily()) first")
            steering = self.load()
        with steering.at({self.adapter_name: strength}):
            return list(self.sampler.sample(prompts, seeds))


@dataclass
class NegativePrompt:
    """The concept as the negative prompt (replaces the unconditional branch of CFG)."""

    sampler: Sampler
    concept: str
    name: str = "negative prompt"
    kind: str = "negative_prompt"
    strengths: tuple[float, ...] = (1.0,)

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], strength: float
    ) -> list[Image | None]:
        return list(self.sampler.sample(prompts, seeds, negative_prompt=self.concept))


@dataclass
class SLDMethod:
    """Safe-Latent-Diffusion guidance away from the concept with one of SLD's presets, as a
    policy's ``guidance`` entry steers (the runtime's :class:`~safety_lora.steering.Steering`)."""

    sampler: Sampler
    concept: str
    preset: str
    kind: str = "sld"
    strengths: tuple[float, ...] = (1.0,)
    extra_calls: int = 0
    extra_seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"SLD {self.preset}"

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], strength: float
    ) -> list[Image | None]:
        method = sld_method(self.concept, preset=self.preset, strength=strength)
        steering = Steering(self.sampler.pipe, single(method))
        with steering.at({}):  # SLD's state restarts with every pipeline call inside
            images = self.sampler.sample(prompts, seeds)
        self.extra_calls += steering.guidance_passes
        self.extra_seconds += steering.guidance_seconds
        return list(images)


@dataclass
class TextEmbeddingMethod:
    """Text-embedding steering away from the concept (toward ``anchor``), as a policy's ``text``
    entry steers (the runtime's :class:`~safety_lora.steering.Steering`): no extra UNet pass.

    :meth:`load` builds the owner once (it encodes the concept's directions) and records the
    seconds that took in ``seconds``; :meth:`generate` loads it when not loaded yet.
    """

    sampler: Sampler
    concept: str
    anchor: str = ""
    strengths: tuple[float, ...] = (1.0,)
    name: str = "text embedding"
    kind: str = "embedding"
    seconds: float | None = None
    _steering: Steering | None = field(default=None, repr=False)

    def load(self) -> Steering:
        if self._steering is None:
            began = time.perf_counter()
            method = embedding_method(self.concept, anchor=self.anchor, name="compare")
            self._steering = Steering(self.sampler.pipe, single(method))
            self.seconds = time.perf_counter() - began
        return self._steering

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], strength: float
    ) -> list[Image | None]:
        with self.load().at({"compare": strength}):
            return list(self.sampler.sample(prompts, seeds))


@dataclass
class ClassifierOnly:
    """The base model's images (``source``'s, when given: the same images, not sampled again),
    each withheld (``None``) when the check flags it."""

    sampler: Sampler
    check: ConceptCheck
    source: BaseModel | None = None
    name: str = "classifier only"
    kind: str = "classifier"
    strengths: tuple[float, ...] = (1.0,)

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], strength: float
    ) -> list[Image | None]:
        source = self.source or BaseModel(self.sampler)
        images = [i for i in source.generate(prompts, seeds, 0.0) if i is not None]
        flags = self.check.shows(images)
        return [None if flagged else image for image, flagged in zip(images, flags, strict=True)]
