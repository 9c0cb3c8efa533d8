"""Run a comparison: every method, strength and seed on the same prompts; cached per unit.

The orchestration: which units a run has and in which order. Units (each cached as JSON
under ``out/units/`` by :class:`~safety_lora.compare.state.Run`, so ``resume`` skips finished
ones): the training of each adapter and the inference cost of each method
(:mod:`safety_lora.compare.units`), the evaluation of each (method, strength, seed), and the
attacks.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from functools import partial
from typing import Any

from safety_lora.adapters.names import denoiser_part
from safety_lora.compare.config import CompareConfig
from safety_lora.compare.methods import (
    AdapterMethod,
    BaseModel,
    ClassifierOnly,
    Method,
    NegativePrompt,
    Sampler,
    SLDMethod,
)
from safety_lora.compare.metrics import (
    ClassifierJudge,
    ConceptWorldJudge,
    Judge,
    PromptSet,
    concept_world_prompts,
    generic_prompts,
)
from safety_lora.compare.state import Run, slug
from safety_lora.compare.units import VARIANTS, budget_ranks, cost_unit, train_unit
from safety_lora.progress import ticker

__all__ = ["run"]

# -- the run ------------------------------------------------------------------------------


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
                "only --resume/progress/device/batch size may change"
            )
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": config.model_dump(mode="json"), "resume_key": config.resume_key()}
    saved.write_text(json.dumps(payload, indent=1))


def _load_pipe(config: CompareConfig) -> Any:
    from safety_lora.training.esd import load_base

    return load_base(config.base, config.device)


def run(config: CompareConfig, *, pipe: Any | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison, write every output file and return ``report.json``'s data."""
    from safety_lora.compare.report import write_report

    _prepare_out(config)
    pipe = _load_pipe(config) if pipe is None else pipe
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
    state = Run(config, pipe, judge, prompts, sampler)
    seeds = range(config.seeds)
    free: list[Method] = [BaseModel(sampler), NegativePrompt(sampler, config.erase)]
    free += [SLDMethod(sampler, config.erase, preset) for preset in config.sld_presets]
    free.append(ClassifierOnly(sampler, check))
    denoiser = getattr(pipe, denoiser_part(pipe))
    if denoiser_part(pipe) != "unet" and (config.sld_presets or config.attack_budget):
        raise ValueError(
            f"compare on a transformer denoiser ({type(denoiser).__name__}): SLD presets and "
            f"the attack harness need a UNet; pass --sld none and --attack-budget 0"
        )
    budgets = {r: budget_ranks(denoiser, list(config.families), r) for r in config.ranks}
    trained = [(k, r, s) for r in config.ranks for k in config.families for s in seeds]
    first = config.families[:1] if config.regularity else []
    regular = [(k, config.ranks[0], v) for k in first for v in VARIANTS if v != "reg"]
    n_strengths = len(config.strengths)
    total = len(free) * (config.seeds + 1)
    total += len(trained) * (1 + n_strengths) + len(regular) * 2 + 2 * len(config.families)
    total += len(config.adapters) * (config.seeds * n_strengths + 2)
    attacked = len(config.families) + len(config.adapters) + len(config.sld_presets)
    total += attacked if config.attack_budget else 0
    results: dict[str, Any] = {"evaluations": [], "training": [], "costs": [], "budgets": {}}
    results["budgets"] = {str(r): b for r, b in budgets.items()}
    with ticker(config.progress, "compare", total) as advance:
        state.advance = advance
        for method in free:
            for s, strength in itertools.product(seeds, method.strengths):
                key = f"eval/{slug(method.name)}/{strength:g}/s{s}"
                unit = state.cached(key, partial(state.evaluate, method, strength, s))
                results["evaluations"].append(unit)
            cost = state.cached(f"cost/{slug(method.name)}", partial(cost_unit, state, method))
            results["costs"].append(cost)
        for kind, budget, s in trained:
            rank = budgets[budget][kind][0]
            name = f"{kind} r{rank}" + (f" (budget r{budget})" if len(config.ranks) > 1 else "")
            path = config.out / "adapters" / f"{kind}-r{rank}-b{budget}-s{s}-reg.safetensors"
            key = f"train/{slug(name)}/s{s}/reg"
            unit = state.cached(key, partial(train_unit, state, kind, rank, s, "reg", path))
            results["training"].append({**unit, "method": name, "budget": budget})
            method = AdapterMethod(sampler, path, name, kind="adapter")
            _evaluate_adapter(state, results, method, s)
            if s == 0 and budget == config.ranks[0]:
                _costs(state, results, method)
        for kind, budget, variant in regular:
            rank = budgets[budget][kind][0]
            name = f"{kind} r{rank} {variant}"
            path = config.out / "adapters" / f"{kind}-r{rank}-b{budget}-s0-{variant}.safetensors"
            key = f"train/{slug(name)}/s0/{variant}"
            unit = state.cached(key, partial(train_unit, state, kind, rank, 0, variant, path))
            results["training"].append({**unit, "method": name, "budget": budget})
            method = AdapterMethod(sampler, path, name, kind="variant", strengths=(1.0,))
            _evaluate_adapter(state, results, method, 0)
        for file in config.adapters:
            method = AdapterMethod(sampler, file, f"file {file.stem}", kind="file")
            for s in seeds:
                _evaluate_adapter(state, results, method, s)
            _costs(state, results, method)
        if config.attack_budget:
            results["attacks"] = _attacks(state, config, trained, budgets)
        return write_report(config, results, prompts)


def _attacks(
    state: Run,
    config: CompareConfig,
    trained: Sequence[tuple[str, int, int]],
    budgets: dict[int, dict[str, tuple[int, int]]],
) -> list[dict[str, Any]]:
    """White-box attack success at strength 1.0: seed-0 adapters, files, SLD presets."""
    from safety_lora.attack import AttackConfig, run_attack

    targets: list[tuple[str, dict[str, Any]]] = []
    for kind, budget, s in trained:
        if s == 0 and budget == config.ranks[0]:
            rank = budgets[budget][kind][0]
            path = config.out / "adapters" / f"{kind}-r{rank}-b{budget}-s0-reg.safetensors"
            targets.append((f"{kind} r{rank}", {"adapter": path}))
    targets += [(f"file {f.stem}", {"adapter": f}) for f in config.adapters]
    targets += [(f"SLD {p}", {"method": "sld", "sld_preset": p}) for p in config.sld_presets]
    rows = []
    for name, fields in targets:

        def compute(name: str = name, fields: dict[str, Any] = fields) -> dict[str, Any]:
            attack = AttackConfig(
                erase=config.erase,
                prompts=list(dict.fromkeys(state.prompts.target))[:3],
                base=config.base,
                classifier=config.classifier,
                category=config.category,
                threshold=config.threshold,
                attacks=["soft", "tokens"],
                budget=config.attack_budget,
                images=config.attack_images,
                num_inference_steps=state.sampler.num_inference_steps,
                guidance_scale=state.sampler.guidance_scale,
                out=config.out / "attacks" / slug(name),
                progress=False,
                device=config.device,
                **fields,
            )
            report = run_attack(attack, pipe=state.pipe)
            soft, tokens = report.row("soft"), report.row("tokens")
            return {
                "method": name,
                "clean": soft.clean_rate,
                "soft_asr": soft.asr,
                "token_asr": tokens.asr,
                "budget": config.attack_budget,
                "seconds_per_attempt": (soft.seconds_per_attempt + tokens.seconds_per_attempt) / 2,
            }

        rows.append(state.cached(f"attack/{slug(name)}", compute))
    return rows


def _evaluate_adapter(state: Run, results: dict[str, Any], method: AdapterMethod, s: int) -> None:
    loaded = False
    try:
        for strength in method.strengths:
            key = f"eval/{slug(method.name)}/{strength:g}/s{s}"

            def compute(strength: float = strength) -> dict[str, Any]:
                nonlocal loaded
                if not loaded:
                    method.load()
                    loaded = True
                return state.evaluate(method, strength, s)

            unit = state.cached(key, compute)
            unit["family"] = method.kind
            results["evaluations"].append(unit)
    finally:
        if loaded:
            method.unload()


def _costs(state: Run, results: dict[str, Any], method: AdapterMethod) -> None:
    loaded = False

    def compute(fused: bool) -> dict[str, Any]:
        nonlocal loaded
        if not loaded:
            method.load()
            loaded = True
        return cost_unit(state, method, fused=fused)

    try:
        for fused in (False, True):
            key = f"cost/{slug(method.name)}/{'fused' if fused else 'unfused'}"
            results["costs"].append(state.cached(key, lambda fused=fused: compute(fused)))  # type: ignore[misc]
    finally:
        if loaded:
            method.unload()
