"""The units of a compare run: training one adapter (with its erasure curve), solving the
closed-form edit, the kohya file of a PEFT adapter; the families' tuned settings, and the
rank each family gets for a parameter budget.

Trained adapters are kept as safetensors under ``out/adapters/``; an adapter trained with
seed ``s`` is evaluated with sampling seed index ``s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from safety_lora.adapters.loading import add_trainable_adapter, unload_adapters
from safety_lora.adapters.names import denoiser_part
from safety_lora.workbench.compare.config import CompareConfig
from safety_lora.workbench.compare.methods import AdapterMethod, TextEmbeddingMethod
from safety_lora.workbench.compare.metrics import BAR
from safety_lora.workbench.compare.rows import Evaluation, KohyaCheck, Probe, Solve, TrainingRun
from safety_lora.workbench.compare.state import Run

if TYPE_CHECKING:
    from safety_lora.workbench.training import TrainConfig
    from safety_lora.workbench.training.esd import EsdTrainer

__all__ = [
    "FAMILY_SETTINGS",
    "VARIANTS",
    "FamilySettings",
    "Training",
    "budget_ranks",
    "closed_form_unit",
    "embedding_anchor",
    "embedding_unit",
    "kohya_unit",
    "train_unit",
]


@dataclass(frozen=True)
class FamilySettings:
    """A family's tuned learning rate, step budget and retain weight (ESD-x, concept world)."""

    lr: float
    budget: int
    preserve_weight: float = 1.0


#: Per family. LoKr's Kronecker factors of these small layers (8x8 (x) 8x8) fit the objective
#: more slowly, so a larger rate and budget; its factors are shared across the whole weight,
#: so one step moves unrelated prompts more: twice the retain weight. LoRA's rate is 4e-3 since
#: the world-2 model (more cross-attention layers): at 2e-3, 50 steps left red at 100%.
FAMILY_SETTINGS: dict[str, FamilySettings] = {
    "lora": FamilySettings(lr=4e-3, budget=150),
    "loha": FamilySettings(lr=4e-3, budget=150),
    "lokr": FamilySettings(lr=1e-2, budget=150, preserve_weight=2.0),
}
#: Regularity variants: (preservation regularisation, early stopping at the erasure bar).
#: "none" is the original kohya/A1111 recipe: the concept's loss only, a fixed step count.
VARIANTS: dict[str, tuple[bool, bool]] = {
    "reg": (True, True),
    "no-preserve": (False, True),
    "no-early-stop": (True, False),
    "none": (False, False),
}
#: Steps between two erasure probes (the early-stopping criterion's checks).
CHUNK = 25
#: Probes without a lower concept rate before an early-stopping run gives up short of the bar.
_PATIENCE = 3
_PROBE = "compare_probe"
#: Sampling-seed offset of the probes: noise the evaluation never sees.
PROBE_OFFSET = 900_000


@dataclass(frozen=True)
class Training:
    """One adapter a run trains: family, rank, seed, variant and learning-rate scale."""

    kind: str
    rank: int
    budget_rank: int
    seed: int
    variant: str = "reg"
    lr_scale: float = 1.0
    multi_budget: bool = False

    @property
    def method(self) -> str:
        """The row name: ``lora r4``, ``lora r4 none``, ``lokr r4 lr 2x`` ..."""
        name = f"{self.kind} r{self.rank}"
        name += f" (budget r{self.budget_rank})" if self.multi_budget else ""
        name += "" if self.variant == "reg" else f" {self.variant}"
        return name + ("" if self.lr_scale == 1.0 else f" lr {self.lr_scale:g}x")

    @property
    def role(self) -> str:
        """``adapter`` (the main rows), ``variant`` (regularity) or ``stability`` (lr scale)."""
        if self.lr_scale != 1.0:
            return "stability"
        return "adapter" if self.variant == "reg" else "variant"

    def path(self, out: Path) -> Path:
        stem = f"{self.kind}-r{self.rank}-b{self.budget_rank}-s{self.seed}-{self.variant}"
        return out / "adapters" / f"{stem}-lr{self.lr_scale:g}.safetensors"


def budget_ranks(unet: Any, families: list[str], rank: int) -> dict[str, tuple[int, int]]:
    """Per family, the rank whose ESD-x parameter count is closest to LoRA's at ``rank``.

    Returns ``{family: (rank, parameters)}``; counted by adding each candidate to ``unet``
    and removing it again (``unet`` must carry no adapter).
    """
    from safety_lora.workbench.training.targets import ADAPTER_KINDS, target_modules

    targets = target_modules(unet, "esd-x")

    def count(kind: str, r: int) -> int:
        with torch.random.fork_rng(devices=[]):
            add_trainable_adapter(unet, ADAPTER_KINDS[kind](r, float(r), targets), _PROBE)
        try:
            return sum(p.numel() for n, p in unet.named_parameters() if _PROBE in n)
        finally:
            unload_adapters(unet)  # delete_adapters would leave peft's wrappers behind

    goal = count("lora", rank)
    out: dict[str, tuple[int, int]] = {}
    for kind in families:
        if kind == "lora":
            out[kind] = (rank, goal)
            continue
        best: tuple[int, int] | None = None
        for r in range(1, 4 * rank + 1):
            n = count(kind, r)
            if best is None or abs(n - goal) < abs(best[1] - goal):
                best = (r, n)
            if n >= goal:
                break
        assert best is not None
        out[kind] = best
    return out


# -- training -----------------------------------------------------------------------------


def _erasure(config: CompareConfig) -> tuple[Any, list[str], dict[str, Any]]:
    """The trainer's Erasure, retain prompts and sampling settings for this run's concept."""
    from safety_lora.workbench.concept_world.tasks import erasure_task
    from safety_lora.workbench.training import Erasure

    concept = config.erase
    if config.base is not None:
        templates = list(config.templates)
        keep = [t.replace("{}", o) for o in config.preserve for t in templates]
        return Erasure(concept=concept, anchor=config.anchor, templates=templates), keep, {}
    task = erasure_task(concept)
    # x_t from 6 DDIM steps over the concept world's schedule (it samples with 12): half the
    # partial denoising of a step; a 5-seed run reached the bar on as many seeds as with 12
    return (
        task.erasure(config.anchor),
        list(task.preserve),
        {"ddim_steps": 6, "guidance_scale": 4.0},
    )


def _train_config(config: CompareConfig, job: Training, budget: int) -> TrainConfig:
    """The trainer's settings for ``job``: its family's rate (x its scale) and retain weight,
    the concept's erasure, and the retain prompts unless its variant leaves them out."""
    from safety_lora.workbench.training import TrainConfig

    settings = FAMILY_SETTINGS[job.kind]
    erasure, keep, extra = _erasure(config)
    preserve, _ = VARIANTS[job.variant]
    return TrainConfig(
        base=config.base,
        erase=[erasure],
        preserve=keep if preserve else [],
        preserve_weight=settings.preserve_weight,
        method="esd-x",
        adapter=job.kind,  # type: ignore[arg-type]
        rank=job.rank,
        steps=budget,
        lr=settings.lr * job.lr_scale,
        batch=2,  # 2 concept + 2 retain rows a step (the authors train on 1): half 4's cost
        seed=job.seed,
        eval_every=None,
        out=job.path(config.out),
        device=config.device,
        progress=False,
        **extra,
    )


def _fit(
    state: Run, trainer: EsdTrainer, seed: int, budget: int, *, early: bool
) -> tuple[list[Probe], int]:
    """Train ``budget`` steps in chunks of :data:`CHUNK`, probing after each; with ``early``,
    stop at the bar or when patience runs out and restore the best probe's adapter. Returns
    the erasure curve and the step whose adapter is kept."""
    curve: list[Probe] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    seconds = 0.0
    while trainer.step < budget:
        began = time.perf_counter()
        for _ in range(min(CHUNK, budget - trainer.step)):
            trainer.train_step()
        seconds += time.perf_counter() - began
        rate = state.probe_rate(seed)  # the trainer's adapter is live at strength 1
        curve.append(Probe(step=trainer.step, seconds=seconds, concept_rate=rate))
        if best is None or rate < best[0]:
            params = {k: v.detach().clone() for k, v in trainer.params.items()}
            best = (rate, trainer.step, params)
        if early and (rate <= BAR or len(curve) - _index(curve, best[1]) > _PATIENCE):
            break
    assert best is not None
    if not early:
        return curve, trainer.step
    with torch.no_grad():  # keep the best probe's adapter
        for name, param in trainer.params.items():
            param.copy_(best[2][name])
    return curve, best[1]


def train_unit(state: Run, job: Training) -> TrainingRun:
    """Train one adapter, probing its concept rate every :data:`CHUNK` steps.

    Early stopping watches erasure itself: a run with early stopping ends at the first probe
    at or under the bar (:data:`BAR`), or after :data:`_PATIENCE` probes without a lower
    rate, and keeps the adapter of its best probe; without, it trains the whole budget. The
    probes sample the target prompts on seeds the evaluation never uses.
    """
    from safety_lora.workbench.training.esd import EsdTrainer

    config = state.config
    budget = config.steps or FAMILY_SETTINGS[job.kind].budget
    path = job.path(config.out)
    train_config = _train_config(config, job, budget)
    trainer = EsdTrainer(state.pipe, train_config)
    try:
        curve, kept = _fit(state, trainer, job.seed, budget, early=VARIANTS[job.variant][1])
        trainer.save_adapter(path)
        parameters = sum(p.numel() for p in trainer.params.values())
        steps = trainer.step
    finally:
        trainer.close()
    reached = next((c for c in curve if c.concept_rate <= BAR), None)
    seconds = curve[-1].seconds
    return TrainingRun(
        method=job.method,
        role=job.role,
        family=job.kind,
        rank=job.rank,
        budget=job.budget_rank,
        seed=job.seed,
        variant=job.variant,
        lr=train_config.lr,
        lr_scale=job.lr_scale,
        step_budget=budget,
        path=str(path),
        trainable_parameters=parameters,
        file_bytes=path.stat().st_size,
        seconds_per_step=seconds / steps,
        training_seconds=seconds,
        steps=steps,
        kept_step=kept,
        stopped_early=steps < budget,
        curve=curve,
        reached_bar=reached is not None,
        steps_to_bar=None if reached is None else reached.step,
        seconds_to_bar=None if reached is None else reached.seconds,
    )


def _index(curve: list[Probe], step: int) -> int:
    """The position of ``step``'s probe in ``curve`` (counted from 1)."""
    return next(i for i, c in enumerate(curve, 1) if c.step == step)


def closed_form_unit(state: Run, path: Path) -> Solve:
    """Solve the closed-form erasure (UCE's edit pushed past the anchor, ``push`` 1) to ``path``;
    on the concept world, also on the task's two-object contexts (they keep the neighbour)."""
    from safety_lora.closed_form import ClosedFormConfig, erase
    from safety_lora.workbench.concept_world.tasks import erasure_task

    config = state.config
    if config.base is None:  # the concept world: the concept beside another object too
        solved = erasure_task(config.erase).closed_form(anchor=config.anchor, push=1.0)
    else:
        erasure, keep, _ = _erasure(config)
        anchors = {} if erasure.anchor is None else {config.erase: erasure.anchor}
        templates = list(erasure.templates)
        solved = ClosedFormConfig(
            erase=[config.erase], templates=templates, anchors=anchors, preserve=keep, push=1.0
        )
    began = time.perf_counter()
    erase(solved, out=path, pipe=state.pipe, base=config.base)
    return Solve(path=str(path), seconds=time.perf_counter() - began)


def embedding_anchor(config: CompareConfig) -> str:
    """Text-embedding steering's anchor: the erasure's, as ESD's and the closed form's ('' for
    none)."""
    return _erasure(config)[0].anchor or ""


def embedding_unit(method: TextEmbeddingMethod) -> Solve:
    """Text-embedding steering's concept directions encoded (its owner built), and the time."""
    method.load()
    assert method.seconds is not None
    return Solve(path=None, seconds=method.seconds, method=method.name)


# -- the kohya file of a PEFT adapter -------------------------------------------------------


def kohya_unit(state: Run, job: Training, peft: Evaluation) -> KohyaCheck:
    """``job``'s PEFT adapter rewritten as a kohya file, and whether the two give the same
    images on the target prompts at strength 1.0 (same math, other file layout).

    ``peft`` is the PEFT file's evaluation at 1.0 on the seed: when the images are
    identical, the kohya row reuses its scores (and its images, the PEFT row's when this
    process rendered them) instead of sampling every prompt and probe again.
    """
    import numpy as np

    from safety_lora.adapters.convert import convert

    source = job.path(state.config.out)
    path = source.with_name(source.stem + "-kohya.safetensors")
    denoiser = getattr(state.pipe, denoiser_part(state.pipe))
    convert(source, path, to="kohya", unet=denoiser)
    p = state.prompts
    seeds = state.seeds(job.seed, len(p.target), 0)
    images = {"peft": state.targets.get((job.method, job.seed))}
    for name, file in (("peft", source), ("kohya", path)):
        if images.get(name) is not None:
            continue
        method = AdapterMethod(state.sampler, file, f"{job.method} ({name} file)", kind="kohya")
        method.load()
        try:
            images[name] = method.generate(p.target, seeds, 1.0)
        finally:
            method.unload()
    peft_images, kohya_images = images["peft"] or [], images["kohya"] or []
    diff = max(
        float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
        for a, b in zip(peft_images, kohya_images, strict=True)
    )
    name = f"{job.method} (kohya file)"
    if diff == 0:
        scores = peft.model_copy(update={"method": name, "kind": "kohya", "family": None})
        if job.seed == 0:
            state.save_strip(name, 1.0, kohya_images[: state.config.grid_images])
    else:
        kohya = AdapterMethod(state.sampler, path, name, kind="kohya")
        kohya.load()
        try:
            scores = state.evaluate(kohya, 1.0, job.seed)
        finally:
            kohya.unload()
    return KohyaCheck(**scores.model_dump(), max_pixel_difference=diff, identical=diff == 0)
