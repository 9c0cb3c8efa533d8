"""Concept world: a synthetic shapes-and-colours world, its analyser and a tiny model of it.

A colour, a shape or a fill style stands in for an unsafe concept, so steering can be
measured exactly; world 2 adds synonyms, styles and scenes (see ``world``).
Submodules: ``world`` (generator), ``analyser``, ``model`` (components); training the model
and judging its samples against their prompts are the workbench's
(:mod:`safety_lora.workbench.concept_world`). Only the light world generator is re-exported
here (no scipy/torch import).
"""

from __future__ import annotations

from safety_lora.concept_world.world import (
    COLOURS,
    SHAPE_ADJECTIVES,
    SHAPES,
    STYLES,
    SYNONYMS,
    TINTS,
    ObjectSpec,
    Sample,
    Scene,
    WorldObject,
    generate,
    parse_prompt,
    parse_tint,
    render,
)

__all__ = [
    "COLOURS",
    "SHAPES",
    "SHAPE_ADJECTIVES",
    "STYLES",
    "SYNONYMS",
    "TINTS",
    "ObjectSpec",
    "Sample",
    "Scene",
    "WorldObject",
    "generate",
    "parse_prompt",
    "parse_tint",
    "render",
]
