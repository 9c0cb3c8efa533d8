"""Concept world: a synthetic shapes-and-colours world, its analyser and a tiny model of it.

A colour or a shape stands in for an unsafe concept, so steering can be measured exactly.
Submodules: ``world`` (generator), ``analyser``, ``model`` (components), ``train``,
``evaluate``. Only the light world generator is re-exported here (no scipy/torch import).
"""

from __future__ import annotations

from safety_lora.concept_world.world import (
    COLOURS,
    SHAPES,
    ObjectSpec,
    Sample,
    Scene,
    WorldObject,
    generate,
    parse_prompt,
    render,
)

__all__ = [
    "COLOURS",
    "SHAPES",
    "ObjectSpec",
    "Sample",
    "Scene",
    "WorldObject",
    "generate",
    "parse_prompt",
    "render",
]
