"""Erasure tasks on the concept world, defined once for the trainer, the solver and benchmarks.

A colour is erased from every shape with anchors that drop it (``"a red square"`` ->
``"a square"``); a shape in every colour with anchors that say "shape" instead (``"a red
triangle"`` -> ``"a red shape"``). Each task keeps the other colours (shapes) as preserve
prompts and names the prompts that measure it: ``target_prompts`` ask for the concept,
``other_prompts`` for its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safety_lora.concept_world.world import COLOURS, SHAPES

__all__ = ["ErasureTask", "erasure_task"]


@dataclass(frozen=True)
class ErasureTask:
    """One concept to erase: its prompt templates and anchor word, preservation, and probes."""

    concept: str
    attribute: Literal["colour", "shape"]
    anchor: str
    templates: tuple[str, ...]
    preserve: tuple[str, ...]
    target_prompts: tuple[str, ...]
    other_prompts: tuple[str, ...]

    @property
    def kept(self) -> Literal["colour", "shape"]:
        """The attribute that must survive on the target prompts."""
        return "shape" if self.attribute == "colour" else "colour"


def erasure_task(concept: str) -> ErasureTask:
    """The task erasing ``concept``, a colour or a shape of the world."""
    if concept in COLOURS:
        others = [c for c in COLOURS if c != concept]
        templates = [f"a {{}} {s}" for s in SHAPES] + ["a {} shape", "a small {} circle"]
        templates += ["a large {} square", "a {} triangle on the left", "a {} circle at the top"]
        preserve = [f"a {c} {s}" for c in others for s in SHAPES]
        preserve += [f"a {c} shape" for c in others]
        return ErasureTask(
            concept=concept,
            attribute="colour",
            anchor="",
            templates=tuple(templates),
            preserve=tuple(preserve),
            target_prompts=tuple(f"a {concept} {s}" for s in SHAPES),
            other_prompts=tuple(f"a {c} {s}" for c in others for s in SHAPES),
        )
    if concept in SHAPES:
        others = [s for s in SHAPES if s != concept]
        templates = [f"a {c} {{}}" for c in COLOURS] + ["a {}", "a small {}", "a large blue {}"]
        preserve = [f"a {c} {s}" for c in COLOURS for s in others] + [f"a {s}" for s in others]
        return ErasureTask(
            concept=concept,
            attribute="shape",
            anchor="shape",
            templates=tuple(templates),
            preserve=tuple(preserve),
            target_prompts=tuple(f"a {c} {concept}" for c in COLOURS),
            other_prompts=tuple(f"a {c} {s}" for c in COLOURS for s in others),
        )
    raise ValueError(
        f"concept world: cannot erase {concept!r}; choose a colour {list(COLOURS)} or a shape "
        f"{list(SHAPES)}"
    )
