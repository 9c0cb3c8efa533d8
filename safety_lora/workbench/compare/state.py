"""The state of one compare run and its unit cache: pipeline, judge, prompts, seeds.

Every unit's row is cached as JSON under ``out/units/`` (so ``resume`` skips finished
ones). Sampling seeds depend only on the seed index and the image's position, so every
method sees the same noise.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from safety_lora.adapters.names import denoiser_part
from safety_lora.workbench.compare.config import CompareConfig
from safety_lora.workbench.compare.methods import BaseModel, Method, Sampler
from safety_lora.workbench.compare.metrics import (
    ClassifierJudge,
    ConceptWorldJudge,
    Judge,
    PromptSet,
    concept_world_prompts,
    generic_prompts,
    score,
)
from safety_lora.workbench.compare.rows import Attack, Evaluation, Row

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["Run", "slug"]

R = TypeVar("R", bound=Row)


def slug(text: str) -> str:
    """``text`` as a file-name part."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


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


@dataclass
class Run:
    """State of one compare run: the pipeline, judge, prompts and the unit cache."""

    config: CompareConfig
    pipe: Any
    judge: Judge
    prompts: PromptSet
    sampler: Sampler
    base: BaseModel
    check: Any = None
    advance: Callable[[str], None] = field(default=lambda _: None)
    #: Target images of the adapters evaluated at strength 1.0 in this process, by (method,
    #: seed index): the kohya check compares its file's images with them.
    targets: dict[tuple[str, int], list[Image | None]] = field(default_factory=dict)

    @classmethod
    def open(cls, config: CompareConfig, pipe: Any | None = None) -> Run:
        """The run's state on ``pipe`` (else the pipeline ``config.base`` names)."""
        if pipe is None:
            from safety_lora.loading import load_pipeline

            pipe, _ = load_pipeline(config.base, config.device)
        unet_only = config.sld_presets or config.embedding_strengths or config.attack_budget
        if denoiser_part(pipe) != "unet" and unet_only:
            denoiser = type(getattr(pipe, denoiser_part(pipe))).__name__
            raise ValueError(
                f"compare on a transformer denoiser ({denoiser}): SLD presets, text-embedding "
                "steering and the attack harness need a UNet; pass --sld none, --embedding none "
                "and --attack-budget 0"
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
        return cls(config, pipe, judge, prompts, sampler, BaseModel(sampler), check=check)

    # -- cache -----------------------------------------------------------------------------

    def cached(self, key: str, row: type[R], compute: Callable[[], R]) -> R:
        """The unit ``key``'s ``row`` from ``out/units`` or computed now and written there
        (with its wall seconds and process, a line of ``out/logs/units.jsonl``)."""
        path = self.config.out / "units" / f"{key}.json"
        if path.is_file():
            result = row.model_validate_json(path.read_text())
        else:
            began = time.perf_counter()
            result = compute()
            seconds = round(time.perf_counter() - began, 3)
            log = self.config.out / "logs" / "units.jsonl"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:  # one short line per write: processes can share it
                f.write(json.dumps({"unit": key, "seconds": seconds, "pid": os.getpid()}) + "\n")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(result.model_dump_json(indent=1))
            tmp.replace(path)
        self.advance(key)
        return result

    # -- seeds and images ------------------------------------------------------------------

    def seeds(self, index: int, n: int, offset: int) -> list[int]:
        return [index * 1_000_003 + offset + i for i in range(n)]

    def references(self, index: int) -> list[Image | None]:
        """Base-model images of the other prompts (for judges comparing against them): the
        base row's own images, rendered once per process and shared."""
        seeds = self.seeds(index, len(self.prompts.other), 500_000)
        return self.base.generate(self.prompts.other, seeds, 0.0)

    def evaluate(self, method: Method, strength: float, index: int) -> Evaluation:
        """Scores of ``method`` at ``strength`` on seed index ``index``; a strip for the grid.

        The paraphrase and neighbour probes are sampled at strength 1.0 (the bar's) and for the
        base model only.
        """
        p = self.prompts
        began = time.perf_counter()
        target = method.generate(p.target, self.seeds(index, len(p.target), 0), strength)
        other = method.generate(p.other, self.seeds(index, len(p.other), 500_000), strength)
        probes: dict[str, list[Image | None] | None] = {}
        probed = strength == 1.0 or method.kind == "base"
        for name, offset in (("paraphrase", 600_000), ("neighbour", 700_000)):
            asked: tuple[str, ...] = getattr(p, name)
            seeds = self.seeds(index, len(asked), offset)
            probes[name] = method.generate(asked, seeds, strength) if asked and probed else None
        seconds = time.perf_counter() - began
        refs = self.references(index) if self.judge.needs_references else None
        scores = asdict(score(self.judge, p, target, other, refs, **probes))
        if index == 0:
            self.save_strip(method.name, strength, target[: self.config.grid_images])
        if strength == 1.0 and method.kind == "adapter":
            self.targets[(method.name, index)] = target
        return Evaluation(
            method=method.name, kind=method.kind, strength=strength, seed=index, seconds=seconds,
            **scores,
        )  # fmt: skip

    def save_strip(self, name: str, strength: float, images: list[Image | None]) -> None:
        from safety_lora.workbench.compare.plots import strip

        folder = self.config.out / "images" / slug(name)
        folder.mkdir(parents=True, exist_ok=True)
        strip(images).save(folder / f"{strength:g}.png")

    def probe_rate(self, index: int) -> float:
        """Concept rate of the pipeline as it is now on the target prompts, on probe seeds
        (noise no evaluation uses): the erasure criterion training stops on."""
        from safety_lora.workbench.compare.units import PROBE_OFFSET

        p = self.prompts
        images = self.sampler.sample(p.target, self.seeds(index, len(p.target), PROBE_OFFSET))
        return sum(self.judge.shows(images)) / len(images)

    def attack(self, name: str, fields: dict[str, Any]) -> Attack:
        """The ``attacks``' success on ``name`` at strength 1.0 (a cached unit)."""
        from safety_lora.workbench.attack import AttackConfig, run_attack

        config = self.config

        def compute() -> Attack:
            attack = AttackConfig(
                erase=config.erase,
                prompts=list(dict.fromkeys(self.prompts.target))[:3],
                base=config.base,
                classifier=config.classifier,
                category=config.category,
                threshold=config.threshold,
                attacks=list(config.attacks),
                budget=config.attack_budget,
                images=config.attack_images,
                num_inference_steps=self.sampler.num_inference_steps,
                guidance_scale=self.sampler.guidance_scale,
                out=config.out / "attacks" / slug(name),
                progress=False,
                device=config.device,
                **fields,
            )
            rows = {r.attack: r for r in run_attack(attack, pipe=self.pipe).rows}
            asr: dict[str, float | None] = {}
            for kind, row in rows.items():
                key = _ASR_FIELDS[kind]
                asr[f"{key}_asr"] = row.asr
                if kind not in ("soft", "tokens"):
                    asr[f"{key}_base_asr"] = row.base_asr
            seconds = sum(r.seconds_per_attempt for r in rows.values()) / len(rows)
            clean = next(iter(rows.values())).clean_rate
            return Attack.model_validate(
                {"method": name, "clean": clean, "budget": config.attack_budget,
                 "seconds_per_attempt": seconds, **asr}
            )  # fmt: skip

        return self.cached(f"attack/{slug(name)}", Attack, compute)


#: Each attack's field prefix in :class:`~safety_lora.workbench.compare.rows.Attack`.
_ASR_FIELDS = {
    "soft": "soft",
    "tokens": "token",
    "inversion": "inversion",
    "img2img": "img2img",
    "concept-vector": "concept_vector",
}
