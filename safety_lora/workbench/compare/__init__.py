"""Compare safety methods side by side: LoRA/LoHa/LoKr adapters vs training-free alternatives.

``run(CompareConfig(erase="red", out=...))`` measures erasure, preservation, stability, cost
and inference overhead for each method on the same prompts and seeds, and writes
``report.md``, ``report.json``, plots and image grids. ``SafetyGuidance`` is Safe Latent
Diffusion as a hook usable with any SD-like pipeline.
"""

from __future__ import annotations

from safety_lora.steering.sld import SLD_PRESETS, SafetyGuidance, SLDConfig, sld_preset
from safety_lora.workbench.compare.config import STRENGTHS, CompareConfig
from safety_lora.workbench.compare.metrics import BAR, PromptSet, Scores, pareto_front, score
from safety_lora.workbench.compare.run import run
from safety_lora.workbench.compare.units import budget_ranks

__all__ = [
    "BAR",
    "SLD_PRESETS",
    "STRENGTHS",
    "CompareConfig",
    "PromptSet",
    "SLDConfig",
    "SafetyGuidance",
    "Scores",
    "budget_ranks",
    "pareto_front",
    "run",
    "score",
    "sld_preset",
]
