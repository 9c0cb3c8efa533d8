"""Train safety-steering adapters: ESD concept erasure with LoRA, LoHa or LoKr (peft).

``train_adapter(TrainConfig(...))`` is the Python API; ``safety-lora train`` the CLI.
"""

from __future__ import annotations

from safety_lora.adapters.fingerprint import base_fingerprint
from safety_lora.workbench.training.config import (
    AdapterKind,
    AdversarialTraining,
    Erasure,
    Method,
    TrainConfig,
)
from safety_lora.workbench.training.esd import TrainResult, esd_target, train_adapter
from safety_lora.workbench.training.io import read_adapter_info
from safety_lora.workbench.training.targets import target_modules

__all__ = [
    "AdapterKind",
    "AdversarialTraining",
    "Erasure",
    "Method",
    "TrainConfig",
    "TrainResult",
    "base_fingerprint",
    "esd_target",
    "read_adapter_info",
    "target_modules",
    "train_adapter",
]
