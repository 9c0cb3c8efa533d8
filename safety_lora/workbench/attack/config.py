"""``AttackConfig``: one red-team run, validated (pydantic v2, frozen).

What is attacked: ``adapter`` (a steering file at ``strength``), ``method`` ``closed-form``
(solved now for the model; ``rounds`` > 0 is RECE's hardened solve, ``attack_rounds`` > 0
the attack-driven one) or ``sld`` (SLD's
``sld_preset``), or none of them: the base model, where nothing is erased (the attacks'
control). ``policy`` (a preset name or a policy file) adds the whole layer (prompt check +
steering + classifiers) and the prompt-check evasion suite. Attacks: ``soft`` (white-box soft
prompt), ``tokens`` (white-box discrete search, judged as typed text), ``evasion`` and
``layer`` (need a policy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from safety_lora.steering.sld import SLD_PRESETS

__all__ = ["ATTACKS", "AttackConfig", "AttackKind"]

AttackKind = Literal["soft", "tokens", "evasion", "layer"]
ATTACKS: tuple[AttackKind, ...] = ("soft", "tokens", "evasion", "layer")


class AttackConfig(BaseModel):
    """One attack run (module docstring). ``budget``: optimisation steps per attempt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    erase: Annotated[str, Field(min_length=1)]
    prompts: list[Annotated[str, Field(min_length=1)]] | None = None
    base: str | None = None
    adapter: Path | None = None
    method: Literal["closed-form", "sld"] | None = None
    policy: str | None = None
    strength: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    sld_preset: str = "medium"
    rounds: Annotated[int, Field(ge=0, le=20)] = 0
    attack_rounds: Annotated[int, Field(ge=0, le=20)] = 0
    attacks: list[AttackKind] = Field(default_factory=lambda: list(ATTACKS))
    budget: Annotated[int, Field(ge=0, le=10_000)] = 40
    tokens: Annotated[int, Field(ge=1, le=16)] = 3
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    candidates: Annotated[int, Field(ge=1, le=4096)] = 16
    attempts: Annotated[int, Field(ge=1, le=100)] = 1
    images: Annotated[int, Field(ge=1, le=256)] = 8
    references: Annotated[int, Field(ge=1, le=64)] = 4
    seed: int = 0
    classifier: dict[str, Any] | None = None
    category: str = "sexual"
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    num_inference_steps: Annotated[int, Field(ge=1, le=1000)] | None = None
    guidance_scale: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    out: Path
    device: str = "cpu"
    progress: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> AttackConfig:
        if self.adapter is not None and self.method is not None:
            raise ValueError(
                f"give `adapter` ({str(self.adapter)!r}) or `method` ({self.method!r}), not both"
            )
        if self.adapter is not None and self.adapter.suffix != ".safetensors":
            raise ValueError(f"`adapter` {str(self.adapter)!r} is not a .safetensors file")
        if self.sld_preset not in SLD_PRESETS:
            raise ValueError(
                f"`sld_preset` must be one of {list(SLD_PRESETS)}, got {self.sld_preset!r}"
            )
        if self.rounds and self.method != "closed-form":
            raise ValueError(f"`rounds` {self.rounds} needs `method` 'closed-form'")
        if self.attack_rounds and self.method != "closed-form":
            raise ValueError(f"`attack_rounds` {self.attack_rounds} needs `method` 'closed-form'")
        if not self.attacks or len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"`attacks` must name each attack once, got {self.attacks}")
        needs_policy = sorted({"evasion", "layer"} & set(self.attacks))
        if needs_policy and self.policy is None and self.attacks != list(ATTACKS):
            raise ValueError(f"attacks {needs_policy} need `policy`")
        if self.base is not None:
            if self.prompts is None:
                raise ValueError(f"`base` {self.base!r} needs `prompts` that ask for the concept")
            if self.classifier is None:
                raise ValueError(
                    f"`base` {self.base!r} needs `classifier` (e.g. {{'kind': 'nudenet'}}) to "
                    f"tell whether an image shows {self.erase!r}"
                )
        return self

    @property
    def run_attacks(self) -> list[AttackKind]:
        """The attacks this run makes (the policy-only ones drop out without a policy)."""
        if self.policy is None:
            return [a for a in self.attacks if a not in ("evasion", "layer")]
        return list(self.attacks)
