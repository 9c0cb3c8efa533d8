"""``TrainConfig``: everything one ESD training run needs, validated (pydantic v2, frozen).

Concepts and anchors: each :class:`Erasure` turns into (concept prompt, anchor prompt) pairs.
Its ``templates`` put the concept into prompts (``"a {} square"`` -> ``"a red square"``); the
anchor prompt is

* the **empty prompt** when ``anchor`` is ``None`` (plain ESD, as in the paper), or
* the same template with ``anchor`` in place of the concept: ``anchor=""`` removes the
  concept (``"a red square"`` -> ``"a square"``), ``anchor="blue"`` replaces it.

Use the anchored form when the concept is an *attribute* of things that must survive
(a colour on shapes, nudity on people): on the concept-world model, plain ESD on "red" broke
every shape and only partly removed red, while anchored pairs erased red and kept shapes.
Plain ESD suits a concept that should disappear with everything it brings (a style, an
object). Explicit ``pairs`` are added to the templates' pairs as given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from safety_lora.templates import check_template, fill_template

__all__ = ["AdapterKind", "AdversarialTraining", "Erasure", "Method", "TrainConfig"]

Method = Literal["esd-x", "esd-u"]
AdapterKind = Literal["lora", "loha", "lokr"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Erasure(_Strict):
    """One concept to erase, and the anchor its prompts are steered toward (module docstring)."""

    concept: Annotated[str, Field(min_length=1)]
    anchor: str | None = None
    templates: list[str] = Field(default_factory=lambda: ["{}"])
    pairs: list[tuple[str, str]] = Field(default_factory=list)

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str]) -> list[str]:
        return [check_template(t) for t in value]

    @model_validator(mode="after")
    def _some_pairs(self) -> Erasure:
        if not self.templates and not self.pairs:
            raise ValueError(f"erasure {self.concept!r} has neither `templates` nor `pairs`")
        return self

    def prompt_pairs(self) -> list[tuple[str, str]]:
        """The (concept prompt, anchor prompt) pairs this erasure trains on, in order."""
        out = []
        for template in self.templates:
            anchor = "" if self.anchor is None else fill_template(template, self.anchor)
            out.append((fill_template(template, self.concept), anchor))
        return [*out, *self.pairs]


class AdversarialTraining(_Strict):
    """AdvUnlearn-style adversarial rounds (:mod:`safety_lora.workbench.training.adversarial`).

    From step ``warmup`` on, every ``every`` steps a soft prompt of ``tokens`` embeddings is
    optimised for ``attack_steps`` Adam steps (``lr``) to bring one concept prompt back on
    the current adapter; every later step also trains the adapter to erase the concept under
    the latest soft prompt of each concept prompt in its batch, with weight ``weight``.
    """

    every: Annotated[int, Field(ge=1)] = 10
    warmup: Annotated[int, Field(ge=0)] = 50
    attack_steps: Annotated[int, Field(ge=1, le=1000)] = 10
    tokens: Annotated[int, Field(ge=1, le=16)] = 3
    lr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.01
    weight: Annotated[float, Field(ge=0.0)] = 1.0


class TrainConfig(_Strict):
    """One ESD run: base model, what to erase/preserve, adapter shape, optimisation, output.

    ``base`` is a diffusers pipeline folder or hub id; ``None`` means the bundled
    concept-world model. ``target_modules`` overrides the method's module selection (full
    module names or suffixes such as ``"attn2.to_k"``). ``ddim_steps`` is the length of the
    DDIM schedule the partial denoising runs on; ``guidance_scale`` its classifier-free
    guidance (1.0 = none).

    Validation: every ``eval_every`` steps the loss is computed on a fixed batch of ``x_t``
    drawn apart from training; training stops after ``patience`` evaluations without an
    improvement of ``min_delta`` (``None``: never stop early) and the saved adapter is the
    best one on validation. ``adversarial`` adds AdvUnlearn-style adversarial rounds (the
    hardened option against soft-prompt and token attacks). ``eval_every=None``: no
    validation, the last adapter is saved.
    ``val_fraction`` > 0 also holds out that share of the pairs and preserve prompts (never
    trained on), to measure generalisation to unseen prompts; keep it 0 when the prompts
    are few and each matters (a held-out retain prompt is not preserved, a held-out concept
    prompt not erased).
    """

    base: str | None = Field(
        default=None,
        description="Pipeline folder or hub id (default: the bundled concept-world model).",
    )
    erase: list[Erasure] = Field(min_length=1)
    preserve: list[str] = Field(
        default_factory=list, description="Prompts whose predictions must not change."
    )
    preserve_weight: Annotated[
        float, Field(ge=0.0, description="Weight of the preserve prompts' loss.")
    ] = 1.0
    adversarial: AdversarialTraining | None = None
    method: Method = Field(
        default="esd-x", description="esd-x: cross-attention only; esd-u: everything else."
    )
    adapter: AdapterKind = Field(default="lora", description="Adapter family.")
    rank: Annotated[int, Field(ge=1, le=1024, description="Adapter rank.")] = 4
    alpha: Annotated[float, Field(gt=0.0)] | None = Field(
        default=None, description="Adapter alpha (default: rank)."
    )
    target_modules: list[str] | None = Field(
        default=None,
        description="Modules to adapt, full names or suffixes such as attn2.to_k (default: the "
        "method's).",
    )
    steps: Annotated[int, Field(ge=1, description="Optimisation steps.")] = 400
    lr: Annotated[float, Field(gt=0.0, le=1.0, description="Adam learning rate.")] = 1e-3
    eta: Annotated[
        float, Field(ge=0.0, description="How far past the anchor to push (ESD eta).")
    ] = 1.0
    batch: Annotated[int, Field(ge=1, description="Concept prompts per step.")] = 4
    ddim_steps: Annotated[
        int, Field(ge=2, le=1000, description="DDIM schedule of the partial run.")
    ] = 50
    guidance_scale: Annotated[
        float, Field(ge=1.0, description="CFG of the partial run (1.0: none).")
    ] = 3.0
    seed: int = Field(default=0, description="Seed (the run is deterministic).")
    val_fraction: Annotated[
        float,
        Field(
            ge=0.0,
            lt=1.0,
            description="Share of prompts held out for validation, never trained on (0: none; "
            "validation then uses the training prompts at noise draws training never sees).",
        ),
    ] = 0.0
    val_draws: Annotated[int, Field(ge=1, description="Noise draws per validation prompt.")] = 4
    eval_every: Annotated[int, Field(ge=1)] | None = Field(
        default=25, description="Validate every N steps; None: never (the last adapter is saved)."
    )
    patience: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Stop after N validations without gain (default: never)."
    )
    min_delta: Annotated[
        float, Field(ge=0.0, description="Validation-loss drop that counts as a gain.")
    ] = 0.0
    checkpoint_every: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Write a checkpoint every N steps."
    )
    checkpoint: Path | None = Field(
        default=None,
        description="Checkpoint file (default: <out stem>.ckpt.safetensors beside out).",
    )
    resume: bool = Field(default=False, description="Continue from the checkpoint if present.")
    out: Path = Field(description="Adapter file to write (.safetensors).")
    device: str = Field(default="cpu", description="Torch device.")
    progress: bool = Field(default=True, description="Show progress bars.")

    @field_validator("out")
    @classmethod
    def _safetensors(cls, value: Path) -> Path:
        if value.suffix != ".safetensors":
            raise ValueError(f"`out` must end with .safetensors, got {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _unique_concepts(self) -> TrainConfig:
        concepts = [e.concept for e in self.erase]
        if len(set(concepts)) != len(concepts):
            raise ValueError(f"`erase` names a concept twice: {concepts}")
        if self.target_modules is not None and not self.target_modules:
            raise ValueError("`target_modules` must not be empty (use None for the method's)")
        if self.adapter == "lokr" and self.alpha is not None and self.alpha != self.rank:
            # LyCORIS scales a LoKr module without a low-rank factor by 1, peft by alpha/r:
            # only alpha == rank means the same in both.
            raise ValueError(f"LoKr needs `alpha` == `rank` ({self.rank}), got {self.alpha}")
        if self.patience is not None and self.eval_every is None:
            raise ValueError(f"`patience` {self.patience} needs validation: `eval_every` is None")
        return self

    @property
    def lora_alpha(self) -> float:
        """``alpha``, defaulting to ``rank`` (adapter scale 1 per unit of rank)."""
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def checkpoint_path(self) -> Path:
        """Where checkpoints go: ``checkpoint`` or ``<out stem>.ckpt.safetensors`` beside it."""
        return self.checkpoint or self.out.with_suffix(".ckpt.safetensors")

    def resume_key(self) -> str:
        """JSON of the fields a checkpoint must share with the run resuming from it."""
        free = {"steps", "resume", "progress", "checkpoint_every", "checkpoint", "out", "device"}
        return json.dumps(self.model_dump(mode="json", exclude=free), sort_keys=True)
