"""safety-lora: a content-safety control layer for diffusion pipelines.

The entry points: :class:`SafePipeline` wraps a diffusers pipeline; :class:`SafetyGuard`
judges prompts and images (or guards your own generation function) without one;
:class:`SafetyMiddleware` puts the guard in front of an ASGI app. All three decide through
one :class:`Policy` and audit every :class:`Decision`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from safety_lora.decisions import Decision, PromptDecision
from safety_lora.policies import Policy, PolicyEngine, PolicyError
from safety_lora.taxonomy import Action, Category, PromptAction

if TYPE_CHECKING:
    from safety_lora.guard import PromptRefused, ReviewResult, SafetyGuard
    from safety_lora.middleware import GuardedRoute, SafetyMiddleware
    from safety_lora.pipeline import SafePipeline, SafePipelineOutput

__version__ = "0.1.0"

__all__ = [
    "Action",
    "Category",
    "Decision",
    "GuardedRoute",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PromptAction",
    "PromptDecision",
    "PromptRefused",
    "ReviewResult",
    "SafePipeline",
    "SafePipelineOutput",
    "SafetyGuard",
    "SafetyMiddleware",
    "__version__",
]

#: Names loaded on first use: the wrapper imports torch and diffusers, the guard Pillow.
_LAZY = {
    "SafePipeline": "safety_lora.pipeline",
    "SafePipelineOutput": "safety_lora.pipeline",
    "SafetyGuard": "safety_lora.guard",
    "PromptRefused": "safety_lora.guard",
    "ReviewResult": "safety_lora.guard",
    "SafetyMiddleware": "safety_lora.middleware",
    "GuardedRoute": "safety_lora.middleware",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'safety_lora' has no attribute {name!r}")
