"""Screening a user's adapter against the concepts a policy erases, before it is used.

A LoRA from a hub can re-teach what the safety steering erased. The screen measures how far
the adapter moves the model toward each concept the policy's steering names, on probe prompts
that do not name it, each against the concept prompt that reads most like it ("a red circle"
for "a blue circle"). Two measures, one scale (0: the adapter does not move the probe toward
the concept; 1: as far as naming the concept would; negative: it pushes away, an eraser):

- ``cross_attention``: on every cross-attention key and value projection the adapter is on,
  with ``d = f(concept) - f(probe)`` (the base projection of the two prompts' text states) and
  ``D = f_with(probe) - f_without(probe)`` (what the adapter adds), the shift is
  ``sum <D, d> / sum |d|^2`` over those projections. No denoiser pass, exact, and linear in
  the adapter's strength. It reads only those projections: the
  adapter's other layers are counted in :attr:`Screening.unread`. The rule reads the worst
  probe.
- ``denoiser``: the same with ``f`` the UNet's prediction on a few small random latents (no
  sampling loop). It reads every layer, at the cost of UNet passes
  (``benchmarks/screening_cost.py`` times both measures), and its per-probe values carry the
  latents' noise, so the rule reads the mean over probes.

``auto`` (the default) takes the denoiser where it runs at the UNet's own sample size, 16 or
less (the embedded model), and cross-attention elsewhere (SD 1.x, SDXL). Concepts and probes
come from the policy's closed-form entries (each concept in its templates; the same templates
with its anchor, and its preserve prompts, as probes) and SLD concepts (probes: the empty
prompt). An adapter file entry names no concept text, so it gives none.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch

from safety_lora.conditioning import PromptBank
from safety_lora.policies.schema import ClosedFormSpec, SteeringPolicy
from safety_lora.policies.schema import ScreenMeasure as Measure
from safety_lora.templates import fill_template

__all__ = [
    "ConceptProbe",
    "ConceptShift",
    "Measure",
    "Screening",
    "policy_probes",
    "screen",
    "screen_measure",
    "screen_rows",
]

#: UNet rows per forward pass of the denoiser measure.
BATCH = 64
#: The cross-attention projections that read the prompt's text states.
TEXT_PROJECTIONS = ("attn2.to_k", "attn2.to_v")
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
    """How far an adapter moves the probes toward one concept: ``shift``, the value the rule
    reads (the mean over probes for the denoiser measure, the worst probe's for
    cross-attention), and the worst probe with its shift."""

    concept: str
    shift: float
    worst: float
    worst_probe: str


@dataclass(frozen=True)
class Screening:
    """An adapter's shift toward every concept screened, how it was measured, the adapter's
    layers the measure does not read (cross-attention: all but the key/value projections),
    and the time the screen took."""

    adapter: str
    shifts: tuple[ConceptShift, ...]
    seconds: float
    measure: str = "denoiser"
    unread: int = 0

    @property
    def worst(self) -> ConceptShift | None:
        """The concept the rule finds closest (None: nothing screened)."""
        return max(self.shifts, key=lambda s: s.shift, default=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (decisions, audit lines, ``inspect --screen --json``)."""
        return {
            "adapter": self.adapter,
            "measure": self.measure,
            "unread_layers": self.unread,
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
    measure: Measure = "auto",
    latents: int = 2,
    timesteps: Sequence[int] = (500,),
    latent_size: int | None = None,
    seed: int = 0,
) -> Screening:
    """Measure ``adapter`` (a name loaded on ``pipe.unet``) against ``concepts``.

    Every other adapter on the UNet keeps its state; the measured one is switched off for the
    reference values. Each distinct prompt is encoded and run once, however many concepts
    share it. The denoiser measure runs ``latents`` random latents of ``latent_size``
    (default: the UNet's ``sample_size``, at most 16) at each of ``timesteps``
    (:func:`screen_rows` counts its UNet rows).
    """
    began = time.perf_counter()
    unet = pipe.unet
    named_layers = _named_layers(unet, adapter)
    if not named_layers:
        raise ValueError(f"no adapter {adapter!r} is loaded on `pipe.unet`")
    how = screen_measure(unet, measure)
    size = latent_size or min(16, _sample_size(unet))
    named = _named(concepts)
    probes = list(dict.fromkeys(p for c in concepts for p in c.probes))
    if not probes:
        return Screening(adapter, (), time.perf_counter() - began, how)
    reference = list(dict.fromkeys([*named.values(), *probes]))
    bank = PromptBank.encode(pipe, reference, latent_size=size)
    unread = 0
    with torch.no_grad():
        if how == "cross_attention":
            towards = _cross_attention(named_layers, adapter, bank, named)
            unread = sum(1 for name, _ in named_layers if not _reads_text(name))
        else:
            layers = [m for _, m in named_layers]
            towards = _denoiser(unet, layers, adapter, bank, named, latents, timesteps, size, seed)
    shifts = []
    for k, concept in enumerate(concepts):
        per_probe = [towards[k, p] for p in concept.probes]
        worst = max(range(len(per_probe)), key=per_probe.__getitem__)
        mean = sum(per_probe) / len(per_probe)
        shift = per_probe[worst] if how == "cross_attention" else mean
        shifts.append(ConceptShift(concept.concept, shift, per_probe[worst], concept.probes[worst]))
    return Screening(adapter, tuple(shifts), time.perf_counter() - began, how, unread)


def screen_measure(unet: Any, measure: Measure = "auto") -> Literal["cross_attention", "denoiser"]:
    """The measure ``measure`` stands for on ``unet``: ``auto`` is the denoiser where it runs
    at the UNet's own sample size (16 or less: the embedded model) and cross-attention
    elsewhere (SD 1.x, SDXL: the denoiser measure would cost UNet passes there)."""
    if measure != "auto":
        return measure
    return "denoiser" if _sample_size(unet) <= 16 else "cross_attention"


def _sample_size(unet: Any) -> int:
    return int(getattr(unet.config, "sample_size", 16) or 16)


def _denoiser(
    unet: Any,
    layers: list[Any],
    adapter: str,
    bank: PromptBank,
    named: dict[tuple[int, str], str],
    latents: int,
    timesteps: Sequence[int],
    size: int,
    seed: int,
) -> dict[tuple[int, str], float]:
    """Per (concept, probe): the UNet prediction's shift toward the concept, averaged over
    ``timesteps`` (each on the same ``latents`` random latents)."""
    generator = torch.Generator().manual_seed(seed)
    channels = int(unet.config.in_channels)
    x = torch.randn(latents, channels, size, size, generator=generator)
    x = x.to(unet.device, unet.dtype)
    probes = list(dict.fromkeys(p for _, p in named))
    towards: dict[tuple[int, str], float] = dict.fromkeys(named, 0.0)
    for t in timesteps:
        with _off(layers, adapter):
            before = dict(zip(bank.prompts, _eps(unet, bank, x, t, bank.prompts), strict=True))
        after = dict(zip(probes, _eps(unet, bank, x, t, probes), strict=True))
        for key, concept in named.items():
            probe = key[1]
            towards[key] += _toward(before[concept], before[probe], after[probe]) / len(timesteps)
    return towards


def _cross_attention(
    layers: list[tuple[str, Any]],
    adapter: str,
    bank: PromptBank,
    named: dict[tuple[int, str], str],
) -> dict[tuple[int, str], float]:
    """Per (concept, probe): the shift toward the concept of the keys and values the
    adapter's cross-attention projections give the probe's text states, pooled over them."""
    rows = {p: i for i, p in enumerate(bank.prompts)}
    moved = dict.fromkeys(named, 0.0)
    norms = dict.fromkeys(named, 0.0)
    for name, layer in layers:
        if not _reads_text(name):
            continue
        states = bank.hidden.to(layer.base_layer.weight.dtype)
        with _off([layer], adapter):
            before = layer(states)
        after = layer(states)
        for key, concept in named.items():
            d = (before[rows[concept]] - before[rows[key[1]]]).flatten().double()
            change = (after[rows[key[1]]] - before[rows[key[1]]]).flatten().double()
            moved[key] += float(change @ d)
            norms[key] += float(d @ d)
    return {key: moved[key] / max(norms[key], 1e-12) for key in named}


def _toward(concept: torch.Tensor, probe: torch.Tensor, with_adapter: torch.Tensor) -> float:
    """``<with_adapter - probe, concept - probe> / |concept - probe|^2``."""
    d = (concept - probe).flatten().double()
    change = (with_adapter - probe).flatten().double()
    return float(change @ d / (d @ d).clamp_min(1e-12))


def _reads_text(name: str) -> bool:
    return name.endswith(TEXT_PROJECTIONS)


def screen_rows(concepts: Sequence[ConceptProbe], *, latents: int = 2, timesteps: int = 1) -> int:
    """The UNet rows :func:`screen` runs for ``concepts`` (its cost): each probe with the
    adapter and without, and the concept prompt each probe is measured against."""
    named = _named(concepts)
    probes = set(p for c in concepts for p in c.probes)
    return (len(set(named.values()) | probes) + len(probes)) * latents * timesteps


def _named(concepts: Sequence[ConceptProbe]) -> dict[tuple[int, str], str]:
    """Per (concept index, probe): the concept prompt its direction is measured toward."""
    return {
        (k, probe): concept.prompts[_closest(probe, concept.prompts)]
        for k, concept in enumerate(concepts)
        for probe in concept.probes
    }


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


def _named_layers(unet: Any, adapter: str) -> list[tuple[str, Any]]:
    """``(name, layer)`` of every peft layer of ``unet`` that holds ``adapter``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [
        (name, m)
        for name, m in unet.named_modules()
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
