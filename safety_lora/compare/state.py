"""The state of one compare run and its unit cache: pipeline, judge, prompts, seeds.

Every unit's result is cached as JSON under ``out/units/`` (so ``resume`` skips finished
ones). Sampling seeds depend only on the seed index and the image's position, so every
method sees the same noise.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from safety_lora.compare.config import CompareConfig
from safety_lora.compare.methods import AdapterMethod, Method, Sampler
from safety_lora.compare.metrics import Judge, PromptSet, score

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["Run", "slug"]


def slug(text: str) -> str:
    """``text`` as a file-name part."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


@dataclass
class Run:
    """State of one compare run: the pipeline, judge, prompts and the unit cache."""

    config: CompareConfig
    pipe: Any
    judge: Judge
    prompts: PromptSet
    sampler: Sampler
    advance: Callable[[str], None] = field(default=lambda _: None)
    _references: dict[int, list[Image]] = field(default_factory=dict)

    # -- cache -----------------------------------------------------------------------------

    def cached(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The unit ``key``'s result from ``out/units`` or computed now and written there."""
        path = self.config.out / "units" / f"{key}.json"
        if path.is_file():
            result: dict[str, Any] = json.loads(path.read_text())
        else:
            result = compute()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(path)
        self.advance(key)
        return result

    # -- seeds and images ------------------------------------------------------------------

    def seeds(self, index: int, n: int, offset: int) -> list[int]:
        return [index * 1_000_003 + offset + i for i in range(n)]

    def references(self, index: int) -> list[Image]:
        """Base-model images of the other prompts (for judges comparing against them)."""
        if index not in self._references:
            seeds = self.seeds(index, len(self.prompts.other), 500_000)
            self._references[index] = self.sampler.sample(self.prompts.other, seeds)
        return self._references[index]

    def evaluate(self, method: Method, strength: float, index: int) -> dict[str, Any]:
        """Scores of ``method`` at ``strength`` on seed index ``index``; a strip for the grid."""
        p = self.prompts
        began = time.perf_counter()
        target = method.generate(p.target, self.seeds(index, len(p.target), 0), strength)
        other = method.generate(p.other, self.seeds(index, len(p.other), 500_000), strength)
        seconds = time.perf_counter() - began
        refs = self.references(index) if self.judge.needs_references else None
        result = score(self.judge, p, target, other, refs).to_json()
        result.update(method=method.name, kind=method.kind, strength=strength, seed=index)
        result["seconds"] = seconds
        if index == 0:
            self.save_strip(method.name, strength, target[: self.config.grid_images])
        return result

    def save_strip(self, name: str, strength: float, images: list[Image | None]) -> None:
        from safety_lora.compare.plots import strip

        folder = self.config.out / "images" / slug(name)
        folder.mkdir(parents=True, exist_ok=True)
        strip(images).save(folder / f"{strength:g}.png")

    def concept_rate(self, method: AdapterMethod, index: int) -> float:
        """Concept rate on the target prompts at strength 1.0 (the bar's measure)."""
        p = self.prompts
        images = method.generate(p.target, self.seeds(index, len(p.target), 0), 1.0)
        shown = self.judge.shows([i for i in images if i is not None])
        return sum(shown) / len(images)
