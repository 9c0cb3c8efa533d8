"""Run a comparison: every method, strength and seed on the same prompts; cached per unit.

Units (each cached as JSON under ``out/units/``, so ``resume`` skips finished ones): the
training of each adapter (kept as safetensors under ``out/adapters/``), the evaluation of each
(method, strength, seed), and the inference cost of each method. Sampling seeds depend only on
the seed index and the image's position, so every method sees the same noise; an adapter
trained with seed ``s`` is evaluated with sampling seed index ``s``.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

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
    BAR,
    ClassifierJudge,
    ConceptWorldJudge,
    Judge,
    PromptSet,
    concept_world_prompts,
    generic_prompts,
    score,
)
from safety_lora.progress import ticker

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["LEARNING_RATES", "VARIANTS", "Run", "budget_ranks", "run"]

#: Learning rate per family (LoKr's Kronecker factors need a larger step).
LEARNING_RATES: dict[str, float] = {"lora": 2e-3, "loha": 2e-3, "lokr": 4e-3}
#: Regularity variants: (preservation regularisation, early stopping).
VARIANTS: dict[str, tuple[bool, bool]] = {
    "reg": (True, True),
    "no-preserve": (False, True),
    "no-early-stop": (True, False),
    "none": (False, False),
}
_PATIENCE = 4
_PROBE = "compare_probe"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def budget_ranks(unet: Any, families: list[str], rank: int) -> dict[str, tuple[int, int]]:
    """Per family, the rank whose ESD-x parameter count is closest to LoRA's at ``rank``.

    Returns ``{family: (rank, parameters)}``; counted by adding each candidate to ``unet``
    and removing it again (``unet`` must carry no adapter).
    """
    from safety_lora.training.targets import ADAPTER_KINDS, target_modules

    targets = target_modules(unet, "esd-x")

    def count(kind: str, r: int) -> int:
        with torch.random.fork_rng(devices=[]):
            unet.add_adapter(ADAPTER_KINDS[kind](r, float(r), targets), adapter_name=_PROBE)
        try:
            return sum(p.numel() for n, p in unet.named_parameters() if _PROBE in n)
        finally:
            unet.unload_lora()  # delete_adapters would leave peft's wrappers behind

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


@dataclass
class Run:
    """State of one compare run: the pipeline, judge, prompts and the unit cache."""

    config: CompareConfig
    pipe: Any
    judge: Judge
    prompts: PromptSet
    sampler: Sampler
    advance: Callable[[str], None] = field(default=lambda _: None)
    _references: dict[int, list[Image]] = field(default_factory=dict)

    # -- cache -----------------------------------------------------------------------------

    def cached(self, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The unit ``key``'s result from ``out/units`` or computed now and written there."""
        path = self.config.out / "units" / f"{key}.json"
        if path.is_file():
            result: dict[str, Any] = json.loads(path.read_text())
        else:
            result = compute()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(path)
        self.advance(key)
        return result

    # -- seeds and images ------------------------------------------------------------------

    def seeds(self, index: int, n: int, offset: int) -> list[int]:
        return [index * 1_000_003 + offset + i for i in range(n)]

    def references(self, index: int) -> list[Image]:
        """Base-model images of the other prompts (for judges comparing against them)."""
        if index not in self._references:
            seeds = self.seeds(index, len(self.prompts.other), 500_000)
            self._references[index] = self.sampler.sample(self.prompts.other, seeds)
        return self._references[index]

    def evaluate(self, method: Method, strength: float, index: int) -> dict[str, Any]:
        """Scores of ``method`` at ``strength`` on seed index ``index``; a strip for the grid."""
        p = self.prompts
        began = time.perf_counter()
        target = method.generate(p.target, self.seeds(index, len(p.target), 0), strength)
        other = method.generate(p.other, self.seeds(index, len(p.other), 500_000), strength)
        seconds = time.perf_counter() - began
        refs = self.references(index) if self.judge.needs_references else None
        result = score(self.judge, p, target, other, refs).to_json()
        result.update(method=method.name, kind=method.kind, strength=strength, seed=index)
        result["seconds"] = seconds
        if index == 0:
            self.save_strip(method.name, strength, target[: self.config.grid_images])
        return result

    def save_strip(self, name: str, strength: float, images: list[Image | None]) -> None:
        from safety_lora.compare.plots import strip

        folder = self.config.out / "images" / _slug(name)
        folder.mkdir(parents=True, exist_ok=True)
        strip(images).save(folder / f"{strength:g}.png")

    def concept_rate(self, method: AdapterMethod, index: int) -> float:
        """Concept rate on the target prompts at strength 1.0 (the bar's measure)."""
        p = self.prompts
        images = method.generate(p.target, self.seeds(index, len(p.target), 0), 1.0)
        shown = self.judge.shows([i for i in images if i is not None])
        return sum(shown) / len(images)


# -- training -----------------------------------------------------------------------------


def _erasure(config: CompareConfig) -> tuple[Any, list[str], dict[str, Any]]:
    """The trainer's Erasure, retain prompts and sampling settings for this run's concept."""
    from safety_lora.concept_world.tasks import erasure_task
    from safety_lora.training import Erasure

    concept = config.erase
    if config.base is not None:
        templates = list(config.templates)
        keep = [t.replace("{}", o) for o in config.preserve for t in templates]
        return Erasure(concept=concept, anchor=config.anchor, templates=templates), keep, {}
    task = erasure_task(concept)
    anchor = task.anchor if config.anchor is None else config.anchor
    erasure = Erasure(concept=concept, anchor=anchor, templates=list(task.templates))
    return erasure, list(task.preserve), {"ddim_steps": 20, "guidance_scale": 4.0}


def train_unit(
    state: Run, kind: str, rank: int, seed: int, variant: str, path: Path
) -> dict[str, Any]:
    """Train one adapter in chunks; after each, the concept rate of the adapter so far."""
    from safety_lora.training import TrainConfig, train_adapter

    config = state.config
    erasure, keep, extra = _erasure(config)
    preserve, early = VARIANTS[variant]
    probe = AdapterMethod(state.sampler, path, name="probe", adapter_name=_PROBE)
    seconds, curve, began = 0.0, [], time.perf_counter()
    result = None
    target = 0
    while result is None or (result.steps < config.steps and not result.stopped_early):
        target = min(target + config.chunk, config.steps)
        train_config = TrainConfig(
            base=config.base,
            erase=[erasure],
            preserve=keep if preserve else [],
            method="esd-x",
            adapter=kind,  # type: ignore[arg-type]
            rank=rank,
            steps=target,
            lr=LEARNING_RATES[kind],
            batch=4,
            seed=seed,
            eval_every=25 if early else None,
            patience=_PATIENCE if early else None,
            checkpoint_every=config.chunk,
            resume=True,
            out=path,
            device=config.device,
            progress=False,
            **extra,
        )
        result = train_adapter(train_config, pipe=state.pipe)
        seconds += result.seconds
        probe.load()
        try:
            rate = state.concept_rate(probe, seed)
        finally:
            probe.unload()
        curve.append({"step": result.steps, "seconds": seconds, "concept_rate": rate})
    train_config.checkpoint_path.unlink(missing_ok=True)
    reached = next((c for c in curve if c["concept_rate"] <= BAR), None)
    return {
        "family": kind,
        "rank": rank,
        "seed": seed,
        "variant": variant,
        "path": str(path),
        "trainable_parameters": result.trainable_parameters,
        "file_bytes": path.stat().st_size,
        "seconds_per_step": seconds / result.steps,
        "training_seconds": seconds,
        "wall_seconds": time.perf_counter() - began,
        "steps": result.steps,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "curve": curve,
        "steps_to_bar": None if reached is None else reached["step"],
        "seconds_to_bar": None if reached is None else reached["seconds"],
    }


# -- costs --------------------------------------------------------------------------------


def _per_step(state: Run, call: Callable[[], object], repeats: int = 3) -> float:
    """Best-of-``repeats`` wall seconds per denoising step of ``call`` (after one warm-up)."""
    call()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - began)
    return best / state.sampler.num_inference_steps


def cost_unit(state: Run, method: Method, fused: bool = False) -> dict[str, Any]:
    """Seconds per step for a batch of target prompts; SLD's extra UNet calls and time."""
    n = min(8, len(state.prompts.target))
    prompts, seeds = list(state.prompts.target[:n]), list(range(n))
    unet = getattr(state.pipe, denoiser_part(state.pipe))
    if fused:
        unet.fuse_lora(lora_scale=1.0, adapter_names=[method.adapter_name])  # type: ignore[attr-defined]
    try:
        per_step = _per_step(state, lambda: method.generate(prompts, seeds, 1.0))
    finally:
        if fused:
            unet.unfuse_lora()
    out: dict[str, Any] = {"method": method.name, "fused": fused, "seconds_per_step": per_step}
    out["batch"] = n
    if isinstance(method, SLDMethod):
        method.extra_calls, method.extra_seconds = 0, 0.0
        method.generate(prompts, seeds, 1.0)
        steps = state.sampler.num_inference_steps
        out["extra_unet_calls_per_step"] = method.extra_calls / steps
        out["extra_seconds_per_step"] = method.extra_seconds / steps
    return out


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
                key = f"eval/{_slug(method.name)}/{strength:g}/s{s}"
                unit = state.cached(key, partial(state.evaluate, method, strength, s))
                results["evaluations"].append(unit)
            cost = state.cached(f"cost/{_slug(method.name)}", partial(cost_unit, state, method))
            results["costs"].append(cost)
        for kind, budget, s in trained:
            rank = budgets[budget][kind][0]
            name = f"{kind} r{rank}" + (f" (budget r{budget})" if len(config.ranks) > 1 else "")
            path = config.out / "adapters" / f"{kind}-r{rank}-b{budget}-s{s}-reg.safetensors"
            key = f"train/{_slug(name)}/s{s}/reg"
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
            key = f"train/{_slug(name)}/s0/{variant}"
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
                out=config.out / "attacks" / _slug(name),
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

        rows.append(state.cached(f"attack/{_slug(name)}", compute))
    return rows


def _evaluate_adapter(state: Run, results: dict[str, Any], method: AdapterMethod, s: int) -> None:
    loaded = False
    try:
        for strength in method.strengths:
            key = f"eval/{_slug(method.name)}/{strength:g}/s{s}"

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
            key = f"cost/{_slug(method.name)}/{'fused' if fused else 'unfused'}"
            results["costs"].append(state.cached(key, lambda fused=fused: compute(fused)))  # type: ignore[misc]
    finally:
        if loaded:
            method.unload()
