"""Steering: the one owner of a pipeline's safety steering, and the registry of its methods.

:class:`Steering` (:mod:`.owner`) loads a policy's methods onto a pipeline and sets each
call's strengths; :mod:`.methods` says what each method puts on the pipeline (an adapter
file, a closed-form edit solved at start-up, SLD guidance from :mod:`.sld`, text-embedding
steering from :mod:`.embedding`). ``SafePipeline``, ``compare`` and ``attack`` all steer
through it.
"""

from __future__ import annotations

from safety_lora.steering.methods import (
    Method,
    embedding_method,
    file_method,
    single,
    sld_method,
)
from safety_lora.steering.owner import Steering, SteeringError

__all__ = [
    "Method",
    "Steering",
    "SteeringError",
    "embedding_method",
    "file_method",
    "single",
    "sld_method",
]
