"""safety-lora: a content-safety control layer for diffusion pipelines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from safety_lora.policies import Decision, Policy, PolicyEngine, PolicyError, PromptDecision
from safety_lora.taxonomy import Action, Category, PromptAction

if TYPE_CHECKING:
    from safety_lora.pipeline import SafePipeline, SafePipelineOutput

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Category",
    "Decision",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PromptAction",
    "PromptDecision",
    "SafePipeline",
    "SafePipelineOutput",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The wrapper imports torch and diffusers: load it on first use, not on `import safety_lora`.
    if name in ("SafePipeline", "SafePipelineOutput"):
        from safety_lora import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'safety_lora' has no attribute {name!r}")
