"""Run a comparison: every method, strength and seed on the same prompts; cached per unit.

The orchestration: which units a run has, grouped by what they share (an adapter's training
and its evaluations and attack; a training-free method's evaluations), and which process
runs each group. Units (each cached as JSON under ``out/units/`` by
:class:`~safety_lora.workbench.compare.state.Run`, so ``resume`` skips finished ones) are
computed by ``workers`` processes, each owning a share of the groups
(:mod:`safety_lora.workbench.compare.plan`);
then this process reads every unit back, measures the per-step costs alone on the machine
(interleaved with the base model, so load cancels out) and writes the report.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

from safety_lora.adapters.names import denoiser_part
from safety_lora.progress import ticker
from safety_lora.workbench.compare.config import CompareConfig
from safety_lora.workbench.compare.costs import cost_rows
from safety_lora.workbench.compare.methods import (
    AdapterMethod,
    BaseModel,
    ClassifierOnly,
    Method,
    NegativePrompt,
    Sampler,
    SLDMethod,
)
from safety_lora.workbench.compare.metrics import (
    ClassifierJudge,
    ConceptWorldJudge,
    Judge,
    PromptSet,
    concept_world_prompts,
    generic_prompts,
)
from safety_lora.workbench.compare.plan import Group, Plan, Results
from safety_lora.workbench.compare.state import Run, slug
from safety_lora.workbench.compare.units import (
    FAMILY_SETTINGS,
    VARIANTS,
    Training,
    budget_ranks,
    closed_form_unit,
    kohya_unit,
    train_unit,
)

__all__ = ["run", "run_shard"]

#: Rough seconds per unit on the concept world, to balance the workers' shares.
_EVAL_COST, _TRAIN_STEP_COST, _ATTACK_COST = 4.0, 0.5, 30.0


def _judge_and_prompts(config: CompareConfig) -> tuple[Judge, PromptSet, Any]:
    """The judge, prompt set and the concept check used by classifier-only."""
    n = config.prompts_per_concept
    if config.base is None:
        from safety_lora.classifiers.concept_world import ConceptWorldClassifier
        from safety_lora.taxonomy import Category

        judge: Judge = ConceptWorldJudge(config.erase)
        prompts = concept_world_prompts(config.erase, n)
        classifier = ConceptWorldClassifier(unsafe={Category.SEXUAL: [config.erase]})
        return judge, prompts, ClassifierJudge(classifier, category="sexual")
    from pydantic import TypeAdapter

    from safety_lora.classifiers.registry import ImageClassifierConfig

    assert config.classifier is not None
    built = TypeAdapter(ImageClassifierConfig).validate_python(config.classifier).build()
    judge = ClassifierJudge(built, category=config.category, threshold=config.threshold)
    prompts = generic_prompts(config.erase, config.preserve, n, config.templates)
    return judge, prompts, judge


def _prepare_out(config: CompareConfig) -> None:
    out = config.out
    saved = out / "config.json"
    if saved.is_file():
        if not config.resume:
            raise FileExistsError(
                f"--out {str(out)!r} holds an earlier run; pass --resume or another folder"
            )
        earlier = json.loads(saved.read_text())["resume_key"]
        if earlier != config.resume_key():
            raise ValueError(
                f"--resume: {str(saved)!r} was written with other settings; "
                "only --resume/progress/device/batch size/workers may change"
            )
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": config.model_dump(mode="json"), "resume_key": config.resume_key()}
    saved.write_text(json.dumps(payload, indent=1))


def _state(config: CompareConfig, pipe: Any | None) -> Run:
    """The run's state on ``pipe`` (else the pipeline ``config.base`` names)."""
    if pipe is None:
        from safety_lora.loading import load_pipeline

        pipe, _ = load_pipeline(config.base, config.device)
    if denoiser_part(pipe) != "unet" and (config.sld_presets or config.attack_budget):
        denoiser = type(getattr(pipe, denoiser_part(pipe))).__name__
        raise ValueError(
            f"compare on a transformer denoiser ({denoiser}): SLD presets and the attack "
            "harness need a UNet; pass --sld none and --attack-budget 0"
        )
    judge, prompts, check = _judge_and_prompts(config)
    if config.base is None:
        from safety_lora.models import CONCEPT_WORLD_DEFAULTS

        steps = int(CONCEPT_WORLD_DEFAULTS["num_inference_steps"])
        guidance = float(CONCEPT_WORLD_DEFAULTS["guidance_scale"])
    else:
        steps, guidance = 30, 7.5
    sampler = Sampler(
        pipe,
        num_inference_steps=config.num_inference_steps or steps,
        guidance_scale=guidance if config.guidance_scale is None else config.guidance_scale,
        batch_size=config.batch_size,
    )
    return Run(config, pipe, judge, prompts, sampler, check=check)


def trainings(
    config: CompareConfig, budgets: dict[int, dict[str, tuple[int, int]]]
) -> list[Training]:
    """Every adapter a run trains: the families on every seed; their regularity variants on
    seed 0 and LoRA's "none" (the original recipe) on the stability seeds; every family at
    the stability learning-rate scales on the stability seeds."""
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
            jobs += [
                job("lora", first, s, variant="none") for s in range(1, config.stability_seeds)
            ]
    for kind, scale in itertools.product(config.families, config.lr_scales):
        jobs += [job(kind, first, s, lr_scale=scale) for s in range(config.stability_seeds)]
    return jobs


def _plan(state: Run) -> Plan:
    """Every group of units of this run, in order."""
    config = state.config
    sampler = state.sampler
    base = BaseModel(sampler)
    free: list[Method] = [base, ClassifierOnly(sampler, state.check, source=base)]
    free.append(NegativePrompt(sampler, config.erase))
    free += [SLDMethod(sampler, config.erase, preset) for preset in config.sld_presets]
    groups: list[Group] = []
    for method in free:
        cost = _EVAL_COST * config.seeds * (2 if isinstance(method, SLDMethod) else 1)
        attack = isinstance(method, SLDMethod) and config.attack_budget
        groups.append(
            Group(
                method.name,
                cost + (_ATTACK_COST if attack else 0.0),
                config.seeds + bool(attack),
                partial(_free_group, state, method, attack=bool(attack)),
            )
        )
    denoiser = getattr(state.pipe, denoiser_part(state.pipe))
    budgets = {r: budget_ranks(denoiser, list(config.families), r) for r in config.ranks}
    for job in trainings(config, budgets):
        budget = config.steps or FAMILY_SETTINGS[job.kind].budget
        early = VARIANTS[job.variant][1]
        strengths = config.strengths if job.role == "adapter" else (1.0,)
        evals = len(strengths)
        kohya = job.kind == "lora" and job.role == "adapter" and config.kohya
        kohya = kohya and denoiser_part(state.pipe) == "unet"  # kohya files name UNet modules
        attack = bool(config.attack_budget) and job.role == "adapter" and job.seed == 0
        attack = attack and job.budget_rank == config.ranks[0]
        cost = _TRAIN_STEP_COST * budget * (0.5 if early else 1.0) + _EVAL_COST * evals
        cost += _ATTACK_COST * attack + _EVAL_COST * 1.5 * kohya
        units = 1 + evals + kohya + attack
        work = partial(_training_group, state, job, strengths, kohya=kohya, attack=attack)
        groups.append(Group(f"{job.method} s{job.seed}", cost, units, work))
    if config.closed_form:
        work = partial(_closed_form_group, state, attack=bool(config.attack_budget))
        units = 1 + len(config.strengths) * config.seeds + bool(config.attack_budget)
        groups.append(Group("closed form", _EVAL_COST * (units - 1), units, work))
    for file in config.adapters:
        units = len(config.strengths) * config.seeds + bool(config.attack_budget)
        work = partial(_file_group, state, file, attack=bool(config.attack_budget))
        groups.append(Group(f"file {file.stem}", _EVAL_COST * units, units, work))
    return Plan(groups)


def run(config: CompareConfig, *, pipe: Any | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison, write every output file and return ``report.json``'s data.

    With ``config.workers`` > 1 (and no ``pipe`` given: a worker loads its own), the other
    workers run as subprocesses of this one, each on its share of the groups.
    """
    from safety_lora.workbench.compare.report import write_report

    _prepare_out(config)
    workers = config.workers if pipe is None else 1
    state = _state(config, pipe)
    plan = _plan(state)
    procs = [_spawn(config, k, workers) for k in range(1, workers)]
    try:
        mine = plan.share(0, workers)
        with ticker(config.progress, f"compare (worker 1/{workers})", plan.units(mine)) as tick:
            state.advance = tick
            plan.execute(mine, Results())
    except BaseException:  # interrupted or failed here: the other workers stop too
        for proc in procs:
            proc.kill()
        raise
    finally:
        failures = [_wait(p, config.out, k) for k, p in enumerate(procs, 1)]
    if any(failures):
        raise RuntimeError("; ".join(f for f in failures if f))
    results = Results()
    with ticker(config.progress, "compare (collecting)", plan.units(plan.groups)) as tick:
        state.advance = tick
        plan.execute(plan.groups, results)
    results.costs = cost_rows(state, results)
    return write_report(config, results.as_dict(), state.prompts)


def run_shard(config: CompareConfig, index: int, count: int) -> None:
    """Compute worker ``index``'s share (of ``count``) of the run's units; report nothing."""
    state = _state(config, None)
    plan = _plan(state)
    plan.execute(plan.share(index, count), Results())


def _spawn(config: CompareConfig, index: int, count: int) -> subprocess.Popen[bytes]:
    log = config.out / "logs" / f"worker-{index + 1}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "safety_lora.workbench.compare.worker", str(config.out)]
    with log.open("wb") as stream:
        return subprocess.Popen(
            [*command, str(index), str(count)], stdout=stream, stderr=subprocess.STDOUT
        )


def _wait(proc: subprocess.Popen[bytes], out: Path, index: int) -> str | None:
    """None when worker ``index`` ended well, else what went wrong (and where its log is)."""
    if proc.wait() == 0:
        return None
    log = out / "logs" / f"worker-{index + 1}.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    return f"compare worker {index + 1} exited with {proc.returncode} ({str(log)!r}: {tail})"


# -- groups -------------------------------------------------------------------------------


def _evaluate(
    state: Run, results: Results, method: Method, strengths: Any, seeds: Any, **extra: Any
) -> None:
    """Evaluate ``method`` at every strength and seed (each a cached unit) into ``results``."""
    for s, strength in itertools.product(seeds, strengths):
        key = f"eval/{slug(method.name)}/{strength:g}/s{s}"
        unit = state.cached(key, partial(state.evaluate, method, strength, s))
        results.evaluations.append({**unit, **extra})


def _free_group(state: Run, method: Method, results: Results, *, attack: bool) -> None:
    _evaluate(state, results, method, method.strengths, range(state.config.seeds))
    if attack:
        assert isinstance(method, SLDMethod)
        fields = {"method": "sld", "sld_preset": method.preset}
        results.attacks.append(state.attack(method.name, fields))


def _adapter_units(
    state: Run, results: Results, method: AdapterMethod, strengths: Any, seeds: Any, **extra: Any
) -> None:
    """``_evaluate`` with the adapter loaded only when a unit is not cached yet."""
    with method.loaded_lazily():
        _evaluate(state, results, method, strengths, seeds, **extra)


def _training_group(
    state: Run, job: Training, strengths: Any, results: Results, *, kohya: bool, attack: bool
) -> None:
    key = f"train/{slug(job.method)}/s{job.seed}"
    unit = state.cached(key, partial(train_unit, state, job))
    results.training.append(unit)
    method = AdapterMethod(state.sampler, job.path(state.config.out), job.method, kind=job.role)
    extra: dict[str, Any] = {"family": job.kind, "role": job.role, "variant": job.variant}
    extra["lr_scale"] = job.lr_scale
    _adapter_units(state, results, method, strengths, [job.seed], **extra)
    if kohya:
        unit = state.cached(
            f"kohya/{slug(job.method)}/s{job.seed}", partial(kohya_unit, state, job)
        )
        results.kohya.append(unit)
    if attack:
        results.attacks.append(state.attack(job.method, {"adapter": method.path}))


def _closed_form_group(state: Run, results: Results, *, attack: bool) -> None:
    path = state.config.out / "adapters" / "closed-form.safetensors"
    results.solves.append(state.cached("train/closed-form", partial(closed_form_unit, state, path)))
    method = AdapterMethod(state.sampler, path, "closed form", kind="closed_form")
    seeds = range(state.config.seeds)
    _adapter_units(state, results, method, state.config.strengths, seeds, family="closed_form")
    if attack:
        results.attacks.append(state.attack(method.name, {"adapter": path}))


def _file_group(state: Run, file: Path, results: Results, *, attack: bool) -> None:
    method = AdapterMethod(state.sampler, file, f"file {file.stem}", kind="file")
    seeds = range(state.config.seeds)
    _adapter_units(state, results, method, state.config.strengths, seeds, family="file")
    if attack:
        results.attacks.append(state.attack(method.name, {"adapter": file}))
