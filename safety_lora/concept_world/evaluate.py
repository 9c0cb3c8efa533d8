"""Analyser-based quality of a concept-world pipeline: does each image show what was asked?

Used by the quality benchmark and by steering benchmarks (an erased concept should stop
being "correct" while its neighbours stay correct).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from safety_lora.concept_world.analyser import Analysis, analyse
from safety_lora.concept_world.model import SAMPLING_DEFAULTS
from safety_lora.concept_world.world import ObjectSpec, parse_prompt

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline
    from PIL.Image import Image


@dataclass(frozen=True)
class Generation:
    """One generated image, what its prompt asked for and what the analyser saw.

    ``seen`` holds (colour, shape, style) per object; ``colour_correct``, ``shape_correct``
    and ``style_correct`` are None where the prompt names no colour/shape/style. For several
    objects, the largest detected objects are matched left to right.
    """

    prompt: str
    seed: int
    image: Image
    wanted: tuple[ObjectSpec, ...]
    seen: tuple[tuple[str | None, str | None, str | None], ...]
    analysis: Analysis
    colour_correct: bool | None
    shape_correct: bool | None
    seconds: float
    style_correct: bool | None = None


ATTRIBUTES = ("colour", "shape", "style")


def _seen(analysis: Analysis, n: int) -> tuple[tuple[str | None, str | None, str | None], ...]:
    """Colour, shape and style of the ``n`` largest objects, left to right, padded with None."""
    objects = sorted(analysis.objects[:n], key=lambda o: o.box[0])
    seen: list[tuple[str | None, str | None, str | None]] = [
        (o.colour, o.shape, o.style) for o in objects
    ]
    return tuple(seen + [(None, None, None)] * (n - len(seen)))


def _correct(wanted: Sequence[str | None], seen: Sequence[str | None]) -> bool | None:
    pairs = [(w, s) for w, s in zip(wanted, seen, strict=True) if w is not None]
    return all(w == s for w, s in pairs) if pairs else None


def judge(prompt: str, image: Image, *, seed: int = -1, seconds: float = 0.0) -> Generation:
    """Compare what ``prompt`` asks for with what the analyser sees in ``image``."""
    wanted = tuple(parse_prompt(prompt))
    analysis = analyse(image)
    seen = _seen(analysis, max(1, len(wanted)))
    colour = _correct([w.colour for w in wanted], [s[0] for s in seen])
    shape = _correct([w.shape for w in wanted], [s[1] for s in seen])
    style = _correct([w.style for w in wanted], [s[2] for s in seen])
    return Generation(prompt, seed, image, wanted, seen, analysis, colour, shape, seconds, style)


def evaluate(
    pipe: StableDiffusionPipeline,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int],
    num_inference_steps: int = int(SAMPLING_DEFAULTS["num_inference_steps"]),
    guidance_scale: float = float(SAMPLING_DEFAULTS["guidance_scale"]),
    **pipe_kwargs: Any,
) -> list[Generation]:
    """Generate every prompt once per seed (one batch per prompt) and judge each image.

    ``pipe_kwargs`` go to the pipeline call unchanged (e.g. ``cross_attention_kwargs``).
    ``seconds`` is the batch's wall time divided by its size.
    """
    import torch

    if not seeds:
        raise ValueError("evaluate: `seeds` must name at least one seed")
    results = []
    for prompt in prompts:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        began = time.perf_counter()
        images = pipe(
            [prompt] * len(seeds),
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            **pipe_kwargs,
        ).images
        seconds = (time.perf_counter() - began) / len(seeds)
        for seed, image in zip(seeds, images, strict=True):
            results.append(judge(prompt, image, seed=seed, seconds=seconds))
    return results


def accuracy(results: Sequence[Generation], attribute: str) -> float:
    """Share of results correct in ``attribute`` (one of ``ATTRIBUTES``) among those that ask."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"accuracy: `attribute` must be one of {ATTRIBUTES}, got {attribute!r}")
    verdicts = [getattr(r, f"{attribute}_correct") for r in results]
    judged = [v for v in verdicts if v is not None]
    return sum(judged) / len(judged) if judged else float("nan")


def confusion(results: Sequence[Generation], attribute: str) -> Counter[tuple[str, str]]:
    """Counts of (asked, seen) for ``attribute`` over every requested object ("none": no object)."""
    if attribute not in ATTRIBUTES:
        raise ValueError(f"confusion: `attribute` must be one of {ATTRIBUTES}, got {attribute!r}")
    index = ATTRIBUTES.index(attribute)
    counts: Counter[tuple[str, str]] = Counter()
    for r in results:
        for spec, seen in zip(r.wanted, r.seen, strict=False):
            asked = getattr(spec, attribute)
            if asked is not None:
                counts[(asked, seen[index] or "none")] += 1
    return counts
