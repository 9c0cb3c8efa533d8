"""A compare run's groups of units, in report order.

A group is the work that must stay in one process (an adapter's training, then its
evaluations, which load the file it wrote, its kohya file and its attack; a training-free
method's evaluations). Each group's estimated cost lets a pool start the longest first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from safety_lora.adapters.names import denoiser_part
from safety_lora.workbench.compare.config import CompareConfig
from safety_lora.workbench.compare.methods import (
    AdapterMethod,
    ClassifierOnly,
    Method,
    NegativePrompt,
    SLDMethod,
    TextEmbeddingMethod,
)
from safety_lora.workbench.compare.rows import Evaluation, KohyaCheck, Results, Solve, TrainingRun
from safety_lora.workbench.compare.state import Run, slug
from safety_lora.workbench.compare.units import (
    FAMILY_SETTINGS,
    VARIANTS,
    Training,
    budget_ranks,
    closed_form_unit,
    embedding_anchor,
    embedding_unit,
    kohya_unit,
    train_unit,
)

__all__ = ["Group", "groups", "trainings"]

#: Rough seconds per unit on the concept world, to start the longest groups first.
_EVAL_COST, _TRAIN_STEP_COST, _ATTACK_COST = 4.0, 0.2, 60.0


@dataclass(frozen=True)
class Group:
    """Units that run in one process: a name, an estimated cost (seconds), how many units it
    caches (for the progress bar), and the work (it appends to a :class:`Results`)."""

    name: str
    cost: float
    units: int
    work: Callable[[Results], None]


def trainings(
    config: CompareConfig, budgets: dict[int, dict[str, tuple[int, int]]]
) -> list[Training]:
    """Every adapter a run trains: the families on every seed; their regularity variants on
    seed 0 and LoRA's "none" (the original recipe) on every seed (the regularity claims'
    seeds are the main run's); every family at the stability learning-rate scales on the
    stability seeds."""
    multi = len(config.ranks) > 1
    first = config.ranks[0]

    def job(kind: str, budget: int, seed: int, **kw: Any) -> Training:
        rank = budgets[budget][kind][0]
        return Training(kind, rank, budget, seed, multi_budget=multi, **kw)

    seeds = range(config.seeds)
    jobs = [job(k, b, s) for b in config.ranks for k in config.families for s in seeds]
    if config.regularity:
        for kind in config.families:
            jobs += [job(kind, first, 0, variant=v) for v in VARIANTS if v != "reg"]
        if "lora" in config.families:
            jobs += [job("lora", first, s, variant="none") for s in range(1, config.seeds)]
    for kind, scale in itertools.product(config.families, config.lr_scales):
        jobs += [job(kind, first, s, lr_scale=scale) for s in range(config.stability_seed_count)]
    return jobs


def groups(state: Run) -> list[Group]:
    """Every group of units of this run, in report order: the training-free methods (text
    embedding last), each trained adapter, the closed-form edit, the files."""
    config = state.config
    attack = bool(config.attack_budget)
    base = state.base
    free: list[Method] = [base, ClassifierOnly(state.sampler, state.check, source=base)]
    free.append(NegativePrompt(state.sampler, config.erase))
    free += [SLDMethod(state.sampler, config.erase, preset) for preset in config.sld_presets]
    out = [_free(state, method, attack=attack) for method in free]
    if config.embedding_strengths:
        n = len(config.embedding_strengths) * config.seeds + attack
        work = partial(_embedding_group, state, attack=attack)
        out.append(Group("text embedding", _EVAL_COST * n, 1 + n, work))
    denoiser = getattr(state.pipe, denoiser_part(state.pipe))
    budgets = {r: budget_ranks(denoiser, list(config.families), r) for r in config.ranks}
    out += [_trained(state, job) for job in trainings(config, budgets)]
    evals = len(config.strengths) * config.seeds
    if config.closed_form:
        work = partial(_closed_form_group, state, attack=attack)
        out.append(Group("closed form", _EVAL_COST * (evals + attack), 1 + evals + attack, work))
    for file in config.adapters:
        work = partial(_file_group, state, file, attack=attack)
        out.append(Group(f"file {file.stem}", _EVAL_COST * (evals + attack), evals + attack, work))
    return out


def _free(state: Run, method: Method, *, attack: bool) -> Group:
    """A training-free method's group: its evaluations, and the attack of SLD's presets in
    ``attack_sld``."""
    seeds = state.config.seeds
    sld = method if isinstance(method, SLDMethod) else None
    attack = attack and sld is not None and sld.preset in state.config.attack_sld
    cost = _EVAL_COST * seeds * (2 if sld else 1) + _ATTACK_COST * attack
    work = partial(_free_group, state, method, attack=attack)
    return Group(method.name, cost, seeds + attack, work)


def _trained(state: Run, job: Training) -> Group:
    """An adapter's group: training, evaluations, the kohya file of a main LoRA (UNet only:
    kohya files name UNet modules), the attack on a main seed-0 adapter of the first budget."""
    config = state.config
    adapter = job.role == "adapter"
    strengths = config.strengths if adapter else (1.0,)
    kohya = config.kohya and adapter and job.kind == "lora"
    kohya = kohya and denoiser_part(state.pipe) == "unet"
    attack = bool(config.attack_budget) and adapter and job.seed == 0
    attack = attack and job.budget_rank == config.ranks[0]
    budget = config.steps or FAMILY_SETTINGS[job.kind].budget
    early = VARIANTS[job.variant][1]
    cost = _TRAIN_STEP_COST * budget * (0.5 if early else 1.0) + _EVAL_COST * len(strengths)
    cost += _ATTACK_COST * attack + _EVAL_COST * 1.5 * kohya
    work = partial(_training_group, state, job, strengths, kohya=kohya, attack=attack)
    units = 1 + len(strengths) + kohya + attack
    return Group(f"{job.method} s{job.seed}", cost, units, work)


def _evaluate(
    state: Run,
    results: Results,
    method: Method,
    strengths: Sequence[float],
    seeds: Sequence[int],
    family: str | None = None,
) -> None:
    """Evaluate ``method`` at every strength and seed (each a cached unit) into ``results``."""
    for s, strength in itertools.product(seeds, strengths):
        key = f"eval/{slug(method.name)}/{strength:g}/s{s}"
        unit = state.cached(key, Evaluation, partial(state.evaluate, method, strength, s))
        results.evaluations.append(unit.model_copy(update={"family": family}))


def _free_group(state: Run, method: Method, results: Results, *, attack: bool) -> None:
    _evaluate(state, results, method, method.strengths, range(state.config.seeds))
    if attack:
        assert isinstance(method, SLDMethod)
        fields = {"method": "sld", "sld_preset": method.preset}
        results.attacks.append(state.attack(method.name, fields))


def _embedding_group(state: Run, results: Results, *, attack: bool) -> None:
    """Text-embedding steering: its directions encoded (timed, like the closed-form solve),
    then its evaluations at its strengths (its owner built only when a unit is not cached)
    and its attack at strength 1."""
    config = state.config
    method = TextEmbeddingMethod(state.sampler, config.erase, anchor=embedding_anchor(config),
                                 strengths=config.embedding_strengths)  # fmt: skip
    compute = partial(embedding_unit, method)
    results.solves.append(state.cached("train/text-embedding", Solve, compute))
    _evaluate(state, results, method, method.strengths, range(config.seeds))
    if attack:
        results.attacks.append(state.attack(method.name, {"method": "embedding"}))


def _adapter_units(
    state: Run,
    results: Results,
    method: AdapterMethod,
    strengths: Sequence[float],
    seeds: Sequence[int],
    family: str,
) -> None:
    """``_evaluate`` with the adapter loaded only when a unit is not cached yet."""
    with method.loaded_lazily():
        _evaluate(state, results, method, strengths, seeds, family)


def _training_group(
    state: Run,
    job: Training,
    strengths: Sequence[float],
    results: Results,
    *,
    kohya: bool,
    attack: bool,
) -> None:
    unit = f"{slug(job.method)}/s{job.seed}"
    results.training.append(
        state.cached(f"train/{unit}", TrainingRun, partial(train_unit, state, job))
    )
    method = AdapterMethod(state.sampler, job.path(state.config.out), job.method, kind=job.role)
    _adapter_units(state, results, method, strengths, [job.seed], job.kind)
    if kohya:
        peft = next(e for e in results.evaluations[::-1] if e.method == job.method and
                    e.strength == 1.0 and e.seed == job.seed)  # fmt: skip
        compute = partial(kohya_unit, state, job, peft)
        results.kohya.append(state.cached(f"kohya/{unit}", KohyaCheck, compute))
    if attack:
        results.attacks.append(state.attack(job.method, {"adapter": method.path}))


def _closed_form_group(state: Run, results: Results, *, attack: bool) -> None:
    path = state.config.out / "adapters" / "closed-form.safetensors"
    compute = partial(closed_form_unit, state, path)
    results.solves.append(state.cached("train/closed-form", Solve, compute))
    method = AdapterMethod(state.sampler, path, "closed form", kind="closed_form")
    seeds = range(state.config.seeds)
    _adapter_units(state, results, method, state.config.strengths, seeds, "closed_form")
    if attack:
        results.attacks.append(state.attack(method.name, {"adapter": path}))


def _file_group(state: Run, file: Path, results: Results, *, attack: bool) -> None:
    method = AdapterMethod(state.sampler, file, f"file {file.stem}", kind="file")
    seeds = range(state.config.seeds)
    _adapter_units(state, results, method, state.config.strengths, seeds, "file")
    if attack:
        results.attacks.append(state.attack(method.name, {"adapter": file}))
