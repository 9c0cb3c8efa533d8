"""Policy files (pydantic schema), bundled presets, and the decision engine."""

from safety_lora.decisions import Decision, PromptDecision
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy, PolicyError

__all__ = ["Decision", "Policy", "PolicyEngine", "PolicyError", "PromptDecision"]
