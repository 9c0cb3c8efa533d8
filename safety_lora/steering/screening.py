"""Screening a user's adapter against the concepts a policy erases, before it is used.

A LoRA from a hub can re-teach what the safety steering erased. The screen measures how far
the adapter moves the denoiser toward each concept the policy's steering names, on probe
prompts that do not name it: with ``d = eps(x, concept) - eps(x, probe)`` (the base model's
prediction toward the concept, from the concept prompt that reads most like the probe: "a
red circle" for "a blue circle") and ``D = eps_with(x, probe) - eps_without(x, probe)`` (what
the adapter adds), the shift is ``<D, d> / |d|^2``: 0 where the adapter does not move the
probe toward the concept, 1 where it moves it as far as naming the concept would, negative
where it pushes away (an eraser). It runs the denoiser on a few small latents (no sampling
loop), so it takes seconds on a CPU. Concepts and probes come from the policy's closed-form
entries (each concept in its templates; the same templates with its anchor, and its preserve
prompts, as probes) and SLD concepts (probes: the empty prompt). An adapter file entry names
no concept text, so it gives none.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from safety_lora.conditioning import PromptBank
from safety_lora.policies.schema import ClosedFormSpec, SteeringPolicy
from safety_lora.templates import fill_template

__all__ = ["ConceptProbe", "ConceptShift", "Screening", "policy_probes", "screen"]

#: UNet rows per forward pass of the screen.
BATCH = 64
#: Probe prompts per concept at most (spread over the policy's list): bounds the screen's cost.
MAX_PROBES = 16


@dataclass(frozen=True)
class ConceptProbe:
    """One concept of a policy: prompts naming it, and probe prompts that do not."""

    concept: str
    prompts: tuple[str, ...]
    probes: tuple[str, ...]


@dataclass(frozen=True)
class ConceptShift:
    """How far an adapter moves the probes toward one concept: the mean over probes, and the
    worst probe with its shift."""

    concept: str
    shift: float
    worst: float
    worst_probe: str


@dataclass(frozen=True)
class Screening:
    """An adapter's shift toward every concept screened, and the time the screen took."""

    adapter: str
    shifts: tuple[ConceptShift, ...]
    seconds: float

    @property
    def worst(self) -> ConceptShift | None:
        """The concept the adapter moves the model toward most (None: nothing screened)."""
        return max(self.shifts, key=lambda s: s.worst, default=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (decisions, audit lines, ``inspect --screen --json``)."""
        return {
            "adapter": self.adapter,
            "seconds": round(self.seconds, 3),
            "shifts": [
                {
                    "concept": s.concept,
                    "shift": round(s.shift, 4),
                    "worst": round(s.worst, 4),
                    "worst_probe": s.worst_probe,
                }
                for s in self.shifts
            ],
        }


def policy_probes(steering: SteeringPolicy) -> list[ConceptProbe]:
    """Every concept a policy's steering names, with its prompts and probes."""
    out = []
    for method in steering.methods:
        if isinstance(method, ClosedFormSpec):
            config = method.closed_form
            for concept in config.erase:
                anchor = config.anchors.get(concept, config.guide)
                prompts = tuple(fill_template(t, concept) for t in config.templates)
                probes = list(dict.fromkeys(
                    [fill_template(t, anchor) for t in config.templates] + list(config.preserve)
                ))  # fmt: skip
                step = max(1, -(-len(probes) // MAX_PROBES))
                out.append(ConceptProbe(concept, prompts, tuple(probes[::step])))
        elif method is steering.guidance and steering.guidance is not None:
            for concept in steering.guidance.concepts:
                out.append(ConceptProbe(concept, (concept,), ("",)))
    return out


def screen(
    pipe: Any,
    adapter: str,
    concepts: Sequence[ConceptProbe],
    *,
    latents: int = 2,
    timesteps: Sequence[int] = (500,),
    latent_size: int | None = None,
    seed: int = 0,
) -> Screening:
    """Measure ``adapter`` (a name loaded on ``pipe.unet``) against ``concepts``.

    ``latents`` random latents of ``latent_size`` (default: the UNet's ``sample_size``, at
    most 16: 128 px for SD) at each of ``timesteps`` are the inputs; every other adapter on the
    UNet keeps its state, and the measured one is switched off for the reference predictions.
    Each distinct prompt runs once per timestep, however many concepts share it.
    """
    began = time.perf_counter()
    unet = pipe.unet
    layers = _layers_of(unet, adapter)
    if not layers:
        raise ValueError(f"no adapter {adapter!r} is loaded on `pipe.unet`")
    size = latent_size or min(16, int(getattr(unet.config, "sample_size", 16) or 16))
    prompts = [p for c in concepts for p in (*c.prompts, *c.probes)]
    if not prompts:
        return Screening(adapter, (), time.perf_counter() - began)
    bank = PromptBank.encode(pipe, prompts, latent_size=size)
    generator = torch.Generator().manual_seed(seed)
    channels = int(unet.config.in_channels)
    x = torch.randn(latents, channels, size, size, generator=generator)
    x = x.to(unet.device, unet.dtype)
    probes = list(dict.fromkeys(p for c in concepts for p in c.probes))
    shifts = []
    with torch.no_grad():
        towards: dict[tuple[int, str], list[float]] = {}
        for t in timesteps:  # every prompt once, whatever concepts share it
            with _off(layers, adapter):
                before = dict(zip(bank.prompts, _eps(unet, bank, x, t, bank.prompts), strict=True))
            after = dict(zip(probes, _eps(unet, bank, x, t, probes), strict=True))
            for k, concept in enumerate(concepts):
                for probe in concept.probes:
                    named = before[concept.prompts[_closest(probe, concept.prompts)]]
                    d = (named - before[probe]).flatten().double()
                    moved = (after[probe] - before[probe]).flatten().double()
                    toward = float(moved @ d / (d @ d).clamp_min(1e-12))
                    towards.setdefault((k, probe), []).append(toward)
        for k, concept in enumerate(concepts):
            per_probe = [sum(towards[k, p]) / len(timesteps) for p in concept.probes]
            worst = max(range(len(per_probe)), key=per_probe.__getitem__)
            shifts.append(
                ConceptShift(
                    concept.concept,
                    sum(per_probe) / len(per_probe),
                    per_probe[worst],
                    concept.probes[worst],
                )
            )
    return Screening(adapter, tuple(shifts), time.perf_counter() - began)


def _closest(probe: str, prompts: Sequence[str]) -> int:
    """The prompt naming the concept that reads most like ``probe`` ("a blue circle" -> "a
    red circle"), so the direction measured differs from the probe in the concept alone."""
    return max(
        range(len(prompts)), key=lambda i: difflib.SequenceMatcher(None, probe, prompts[i]).ratio()
    )


def _eps(
    unet: Any, bank: PromptBank, x: torch.Tensor, t: int, prompts: Sequence[str]
) -> torch.Tensor:
    """The UNet's prediction for every latent under each prompt, ``[prompt, latent, ...]``,
    in batches of at most :data:`BATCH` rows."""
    rows = bank.index([p for p in prompts for _ in range(len(x))])
    out = []
    for start in range(0, len(rows), BATCH):
        chunk = rows[start : start + BATCH]
        latents = x.repeat(len(prompts), *([1] * (x.dim() - 1)))[start : start + BATCH]
        steps = torch.full((len(chunk),), t, device=x.device)
        out.append(unet(latents, steps, **bank.unet_kwargs(chunk)).sample.float())
    return torch.cat(out).reshape(len(prompts), len(x), *x.shape[1:])


def _layers_of(unet: Any, adapter: str) -> list[Any]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        m
        for m in unet.modules()
        if isinstance(m, BaseTunerLayer) and adapter in getattr(m, "scaling", {})
    ]


@contextmanager
def _off(layers: list[Any], adapter: str) -> Iterator[None]:
    """``adapter`` at strength 0 on ``layers`` inside the block, as it was after."""
    saved = [layer.scaling[adapter] for layer in layers]
    try:
        for layer in layers:
            layer.scaling[adapter] = 0.0
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.scaling[adapter] = value
