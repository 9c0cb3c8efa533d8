"""Analyser-based quality of a concept-world pipeline: does each image show what was asked?

Used by the quality benchmark and by steering benchmarks (an erased concept should stop
being "correct" while its neighbours stay correct).
"""

from __future__ import annotations

import itertools
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


#: What the analyser saw of one object: colour, shape, style (None where nothing was seen).
Seen = tuple[str | None, str | None, str | None]


@dataclass(frozen=True)
class Generation:
    """One generated image, what its prompt asked for and what the analyser saw.

    ``seen`` holds (colour, shape, style) per object; ``colour_correct``, ``shape_correct``
    and ``style_correct`` are None where the prompt names no colour/shape/style. For several
    objects, the largest detected objects are matched to the asked ones in the order that
    agrees best (ties: left to right): a two-object prompt names no positions, so "a red
    circle and a blue square" with the square on the left is drawn as asked.
    """

    prompt: str
    seed: int
    image: Image
    wanted: tuple[ObjectSpec, ...]
    seen: tuple[Seen, ...]
    analysis: Analysis
    colour_correct: bool | None
    shape_correct: bool | None
    seconds: float
    style_correct: bool | None = None


ATTRIBUTES = ("colour", "shape", "style")


def _agreement(wanted: Sequence[ObjectSpec], seen: Sequence[Seen]) -> int:
    return sum(
        w is not None and w == got
        for spec, obj in zip(wanted, seen, strict=True)
        for w, got in zip((spec.colour, spec.shape, spec.style), obj, strict=True)
    )


def _seen(analysis: Analysis, wanted: Sequence[ObjectSpec]) -> tuple[Seen, ...]:
    """Colour, shape and style of the largest objects (one per asked object, padded with
    None), in the order that best matches ``wanted``; ties keep left to right."""
    n = max(1, len(wanted))
    objects = sorted(analysis.objects[:n], key=lambda o: o.box[0])
    seen: list[Seen] = [(o.colour, o.shape, o.style) for o in objects]
    seen += [(None, None, None)] * (n - len(seen))
    if len(wanted) < 2:
        return tuple(seen)
    orders = itertools.permutations(seen)  # the first is left to right: max keeps it on ties
    return max(orders, key=lambda order: _agreement(wanted, order))


def _correct(wanted: Sequence[str | None], seen: Sequence[str | None]) -> bool | None:
    pairs = [(w, s) for w, s in zip(wanted, seen, strict=True) if w is not None]
    return all(w == s for w, s in pairs) if pairs else None


def judge(prompt: str, image: Image, *, seed: int = -1, seconds: float = 0.0) -> Generation:
    """Compare what ``prompt`` asks for with what the analyser sees in ``image``."""
    wanted = tuple(parse_prompt(prompt))
    analysis = analyse(image)
    seen = _seen(analysis, wanted)
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
