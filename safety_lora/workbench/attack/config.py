"""``AttackConfig``: one red-team run, validated (pydantic v2, frozen).

What is attacked: ``adapter`` (a steering file at ``strength``), ``method`` ``closed-form``
(solved now for the model; ``rounds`` > 0 is RECE's hardened solve, ``attack_rounds`` > 0
the attack-driven one), ``sld`` (SLD's ``sld_preset``) or ``embedding`` (text-embedding
steering at ``strength``), or none of them: the base model, where nothing is erased (the
attacks' control). ``policy`` (a preset name or a policy file) adds the whole layer (prompt
check + steering + classifiers) and the prompt-check evasion suite. Attacks: ``soft``
(white-box soft prompt), ``tokens`` (white-box discrete search, judged as typed text),
``inversion`` (DDIM inversion of base-model images of the concept under the ``neutral``
prompt, regenerated from the latent), ``img2img`` (those images through image-to-image at
``img2img_strength``), ``concept-vector`` (Ring-A-Bell: black-box genetic token search
towards the concept's text direction), ``evasion`` and ``layer`` (need a policy).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from safety_lora.steering.sld import SLD_PRESETS

__all__ = ["ATTACKS", "AttackConfig", "AttackKind"]

AttackKind = Literal["soft", "tokens", "inversion", "img2img", "concept-vector", "evasion", "layer"]
ATTACKS: tuple[AttackKind, ...] = (
    "soft", "tokens", "inversion", "img2img", "concept-vector", "evasion", "layer",
)  # fmt: skip


class AttackConfig(BaseModel):
    """One attack run (module docstring). ``budget``: optimisation steps per attempt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    erase: Annotated[str, Field(min_length=1, description="The erased concept to bring back.")]
    prompts: list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, description="Prompts asking for the concept (default: the concept world's)."
    )
    base: str | None = Field(
        default=None,
        description="Pipeline folder or hub id (default: the bundled concept-world model).",
    )
    adapter: Path | None = Field(default=None, description="Steering adapter file to attack.")
    method: Literal["closed-form", "sld", "embedding"] | None = Field(
        default=None,
        description="Attack a closed-form edit solved now, SLD guidance or text-embedding "
        "steering (no file).",
    )
    policy: str | None = Field(
        default=None,
        description="Also attack this policy (a preset or a policy file): prompt-check evasion "
        "and the whole layer.",
    )
    strength: Annotated[float, Field(ge=0.0, le=10.0, description="Adapter or SLD strength.")] = 1.0
    sld_preset: str = Field(default="medium", description="SLD preset for method sld.")
    rounds: Annotated[
        int,
        Field(ge=0, le=20, description="RECE rounds for method closed-form (the hardened solve)."),
    ] = 0
    attack_rounds: Annotated[
        int,
        Field(
            ge=0,
            le=20,
            description="Attack rounds for method closed-form (the attack-driven hardening).",
        ),
    ] = 0
    attacks: list[AttackKind] = Field(
        default_factory=lambda: list(ATTACKS),
        description="Attacks to make (evasion and layer only with a policy).",
    )
    budget: Annotated[
        int,
        Field(
            ge=0,
            le=10_000,
            description="Optimisation steps per attempt (concept-vector: generations).",
        ),
    ] = 40
    tokens: Annotated[
        int,
        Field(
            ge=1,
            le=16,
            description="Attack tokens before the prompt (the concept-vector prompt's length).",
        ),
    ] = 3
    lr: Annotated[
        float, Field(gt=0.0, le=1.0, description="Learning rate of the soft-prompt attack.")
    ] = 0.01
    candidates: Annotated[
        int, Field(ge=1, le=4096, description="Token candidates per step of the token search.")
    ] = 16
    attempts: Annotated[
        int, Field(ge=1, le=100, description="Attempts per prompt (different seeds).")
    ] = 1
    images: Annotated[int, Field(ge=1, le=256, description="Images judged per attempt.")] = 8
    references: Annotated[
        int,
        Field(ge=1, le=64, description="Reference images per prompt the white-box loss aims at."),
    ] = 4
    neutral: str = Field(
        default="",
        description="Neutral prompt of the inversion, img2img and concept-vector attacks.",
    )
    img2img_strength: Annotated[
        float,
        Field(gt=0.0, le=1.0, description="Image-to-image strength of the img2img attack."),
    ] = 0.75
    vector_scale: Annotated[
        float,
        Field(
            ge=0.0,
            le=100.0,
            description="Concept-vector attack: how far along the concept's direction the "
            "target embedding lies (Ring-A-Bell's coefficient).",
        ),
    ] = 3.0
    population: Annotated[
        int,
        Field(
            ge=2,
            le=4096,
            description="Concept-vector attack: genetic population (``budget`` generations).",
        ),
    ] = 32
    seed: int = Field(default=0, description="Seed of every draw (same seed, same report).")
    classifier: dict[str, Any] | None = Field(
        default=None,
        description="Image-classifier config that judges a user's model, e.g. "
        '{"kind": "nudenet"}.',
    )
    category: str = Field(
        default="sexual", description="The classifier's category for the concept."
    )
    threshold: Annotated[
        float, Field(ge=0.0, le=1.0, description="Classifier score that counts as shown.")
    ] = 0.5
    num_inference_steps: Annotated[int, Field(ge=1, le=1000)] | None = Field(
        default=None, description="Denoising steps (default: the model's)."
    )
    guidance_scale: Annotated[float, Field(ge=0.0, le=100.0)] | None = Field(
        default=None, description="Classifier-free guidance scale (default: the model's)."
    )
    out: Path = Field(description="Folder for report.json and report.md.")
    device: str = Field(default="cpu", description="Torch device.")
    progress: bool = Field(default=True, description="Show progress bars.")

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
