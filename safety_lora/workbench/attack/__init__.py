"""Red-team harness: how often attacks bring an erased concept back.

White-box attacks on the steered model (a soft prompt and a discrete token search, after
UnlearnDiffAtk and AdvUnlearn), black-box evasion of the prompt check, and the whole layer
under a policy. ``run_attack(AttackConfig(...))`` is the Python API, ``safety-lora attack``
the CLI; both write ``report.json`` and ``report.md``.
"""

from __future__ import annotations

from safety_lora.workbench.attack.config import AttackConfig
from safety_lora.workbench.attack.report import AttackReport, AttackRow
from safety_lora.workbench.attack.run import run_attack

__all__ = ["AttackConfig", "AttackReport", "AttackRow", "run_attack"]
