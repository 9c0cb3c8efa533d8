"""One red-team run: white-box attacks on the steered model, evasion of the prompt check and
the whole layer under a policy; attack success rates beside the clean rates, in one report.

* **clean rate** — share of images of the plain concept prompts that show the concept;
* **ASR** — share of images of the attack's prompts that do (``images`` seeds per attempt;
  the same seeds as the clean images, so the two differ by the attack alone);
* **base ASR** (inversion, img2img, concept-vector) — the same attack inputs on the base
  model: whether the attack brings the concept back where nothing is erased.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from safety_lora.progress import ticker
from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.seeds import hashed_seed
from safety_lora.workbench.attack.concept_vector import concept_vector, vector_search
from safety_lora.workbench.attack.config import AttackConfig
from safety_lora.workbench.attack.discrete import banned_tokens, token_search
from safety_lora.workbench.attack.inversion import (
    ddim_invert,
    ddim_sampling,
    encode_images,
    img2img_pipeline,
)
from safety_lora.workbench.attack.objective import Objective
from safety_lora.workbench.attack.report import AttackReport, AttackRow, write_report
from safety_lora.workbench.attack.soft import soft_prompt
from safety_lora.workbench.attack.targets import (
    AdapterTarget,
    EmbeddingTarget,
    SLDTarget,
    Target,
    render,
)

__all__ = ["build_target", "run_attack"]


def _seed(seed: int, *parts: object) -> int:
    return hashed_seed("safety-lora-attack", seed, *parts)


def _sampling(config: AttackConfig) -> tuple[int, float]:
    from safety_lora.concept_world.model import SAMPLING_DEFAULTS

    default_steps, default_cfg = (
        (int(SAMPLING_DEFAULTS["num_inference_steps"]), float(SAMPLING_DEFAULTS["guidance_scale"]))
        if config.base is None
        else (30, 7.5)
    )
    return config.num_inference_steps or default_steps, config.guidance_scale or default_cfg


def _prompts(config: AttackConfig) -> list[str]:
    if config.prompts is not None:
        return list(config.prompts)
    from safety_lora.workbench.concept_world.tasks import erasure_task

    return list(erasure_task(config.erase).target_prompts)


def _judge(config: AttackConfig) -> Any:
    from safety_lora.workbench.compare.metrics import ClassifierJudge, ConceptWorldJudge

    if config.base is None:
        return ConceptWorldJudge(config.erase)
    from pydantic import TypeAdapter

    from safety_lora.classifiers.registry import ImageClassifierConfig

    built = TypeAdapter(ImageClassifierConfig).validate_python(config.classifier).build()
    return ClassifierJudge(built, category=config.category, threshold=config.threshold)


#: The targets a run builds.
AnyTarget = AdapterTarget | SLDTarget | EmbeddingTarget


def build_target(config: AttackConfig, pipe: Any, steps: int) -> AnyTarget:
    """The steered model ``config`` names (the base model when it names none)."""
    if config.adapter is not None:
        return AdapterTarget(pipe, config.adapter, strength=config.strength)
    if config.method == "sld":
        return SLDTarget(
            pipe,
            concept=config.erase,
            preset=config.sld_preset,
            strength=config.strength,
            num_inference_steps=steps,
            name=f"SLD {config.sld_preset}",
        )
    if config.method == "embedding":
        return EmbeddingTarget(pipe, concept=config.erase, strength=config.strength)
    if config.method == "closed-form":
        from safety_lora.closed_form import ClosedFormConfig, erase
        from safety_lora.workbench.hardening import harden

        settings: dict[str, Any] = {"push": 1.0, "rounds": config.rounds}
        settings["attack_rounds"] = config.attack_rounds
        if config.base is None:  # the concept world: two-object contexts, as compare solves
            from safety_lora.workbench.concept_world.tasks import erasure_task

            solved = erasure_task(config.erase).closed_form(**settings)
        else:
            solved = ClosedFormConfig(erase=[config.erase], **settings)
        path = config.out / "closed_form.safetensors"
        erase(solved, out=path, pipe=pipe, refine=harden)
        name = "closed-form" + (f" + RECE x{config.rounds}" if config.rounds else "")
        name += f" + attack rounds x{config.attack_rounds}" if config.attack_rounds else ""
        return AdapterTarget(pipe, path, strength=config.strength, name=name)
    return AdapterTarget(pipe, None)


def _attempt(
    config: AttackConfig,
    attack: str,
    objective: Objective,
    prompt: str,
    generator: torch.Generator,
    banned: set[int],
) -> tuple[torch.Tensor, str | None, dict[str, float]]:
    """One attempt: the states to generate from, the typed prompt (None: soft), the losses."""
    if attack == "soft":
        soft = soft_prompt(
            objective,
            prompt,
            tokens=config.tokens,
            steps=config.budget,
            lr=config.lr,
            generator=generator,
        )
        return soft.states, None, {"initial_loss": soft.initial_loss, "final_loss": soft.final_loss}
    found = token_search(
        objective,
        prompt,
        tokens=config.tokens,
        steps=config.budget,
        candidates=config.candidates,
        banned=banned,
        generator=generator,
    )
    losses = {"initial_loss": found.initial_loss, "final_loss": found.final_loss}
    return objective.encoder.encode([found.text]), found.text, losses


@dataclass
class _Bench:
    """What every attack of a run shares: the pipeline, its sampling settings, the prompts, the
    judge, the text encoder, and the seeds the clean and attacked images are drawn with."""

    config: AttackConfig
    pipe: Any
    steps: int
    cfg: float
    prompts: list[str]
    judge: Any
    encoder: PromptEncoder
    empty: torch.Tensor
    eval_seeds: list[int]

    @classmethod
    def build(cls, config: AttackConfig, pipe: Any) -> _Bench:
        steps, cfg = _sampling(config)
        encoder = PromptEncoder(pipe)
        seeds = [_seed(config.seed, "images", i) for i in range(config.images)]
        return cls(
            config, pipe, steps, cfg, _prompts(config), _judge(config), encoder,
            encoder.encode([""]), seeds,
        )  # fmt: skip

    def shown(self, states: torch.Tensor, latents: torch.Tensor | None = None) -> list[bool]:
        """Whether each evaluation image generated from ``states`` (and ``latents``, one row
        per evaluation seed, when given) shows the concept."""
        return self.judged(self.render(states, self.eval_seeds, latents=latents))

    def judged(self, images: list[Any]) -> list[bool]:
        """Whether each of ``images`` shows the concept."""
        return [bool(s) for s in self.judge.shows(images)]

    def render(
        self, states: torch.Tensor, seeds: list[int], latents: torch.Tensor | None = None
    ) -> list[Any]:
        """One image of ``states`` per seed (from ``latents`` when given)."""
        return list(
            render(
                self.pipe,
                states.expand(len(seeds), -1, -1),
                seeds,
                empty=self.empty,
                num_inference_steps=self.steps,
                guidance_scale=self.cfg,
                latents=latents,
            )
        )

    def objective(self, target: Target, prompt: str, index: int) -> Objective:
        """The white-box objective for ``prompt`` (its reference images rendered once)."""
        refs = [_seed(self.config.seed, "refs", index, i) for i in range(self.config.references)]
        return Objective.build(
            self.pipe,
            target,
            self.encoder,
            prompt,
            refs,
            num_inference_steps=self.steps,
            guidance_scale=self.cfg,
        )


def _attack_row(
    bench: _Bench,
    target: Target,
    attack: str,
    clean: dict[str, list[bool]],
    objectives: dict[str, Objective],
    found: list[str],
    tick: Any,
) -> AttackRow:
    """Every attempt of ``attack`` on every prompt: its success rate beside the clean rate."""
    config = bench.config
    banned = banned_tokens(bench.encoder.tokenizer, config.erase)
    details: list[dict[str, Any]] = []
    seconds, total_hits = 0.0, 0
    for p_index, prompt in enumerate(bench.prompts):
        if prompt not in objectives:
            objectives[prompt] = bench.objective(target, prompt, p_index)
        for attempt in range(config.attempts):
            gen = torch.Generator().manual_seed(_seed(config.seed, attack, p_index, attempt))
            began = time.perf_counter()
            states, text, losses = _attempt(config, attack, objectives[prompt], prompt, gen, banned)
            seconds += time.perf_counter() - began
            if text is not None:
                found.append(text)
            with target.steering():
                hits = sum(bench.shown(states))
            total_hits += hits
            details.append(
                {
                    "prompt": prompt,
                    "attempt": attempt,
                    "text": text,
                    "shown": hits,
                    "clean_shown": sum(clean[prompt]),
                    **losses,
                }
            )
            tick(f"{attack} {prompt!r}")
    attempts = len(details)
    images = attempts * len(bench.eval_seeds)
    return AttackRow(
        attack=attack,
        target=target.name,
        attempts=attempts,
        images=images,
        asr=total_hits / images,
        clean_rate=_rate(clean),
        budget=config.budget,
        seconds_per_attempt=seconds / attempts,
        prompts=details,
    )


def _rate(shown: dict[str, list[bool]]) -> float:
    """The share of images that show the concept, over every prompt."""
    return sum(map(sum, shown.values())) / sum(map(len, shown.values()))


#: The attacks that regenerate the concept from base-model images or a concept vector.
REGENERATING = ("inversion", "img2img", "concept-vector")


def _regenerated(
    bench: _Bench,
    target: AnyTarget,
    attack: str,
    prompt: str,
    inputs: Any,
    *,
    steered: bool,
) -> list[Any]:
    """The images ``attack`` makes from ``inputs`` (the base images, or the prompt found) on
    the steered model, or with ``steered`` False on the base model."""
    neutral = bench.encoder.encode([bench.config.neutral])
    if attack == "concept-vector":
        with target.steering() if steered else target.base():
            return bench.render(bench.encoder.encode([inputs]), bench.eval_seeds)
    if attack == "inversion":
        x0 = encode_images(bench.pipe, inputs)
        with nullcontext() if steered else target.base():
            xt = ddim_invert(
                bench.pipe, target.eps, x0, neutral, empty=bench.empty,
                num_inference_steps=bench.steps, guidance_scale=bench.cfg,
            )  # fmt: skip
            with ddim_sampling(bench.pipe), target.steering() if steered else nullcontext():
                return bench.render(neutral, bench.eval_seeds, latents=xt)
    edit = img2img_pipeline(bench.pipe)
    gens = [torch.Generator(bench.pipe.device).manual_seed(s) for s in bench.eval_seeds]
    with target.steering(edit) if steered else target.base(), torch.no_grad():
        return list(
            edit(
                prompt_embeds=neutral.expand(len(inputs), -1, -1),
                negative_prompt_embeds=bench.empty.expand(len(inputs), -1, -1),
                image=list(inputs),
                strength=bench.config.img2img_strength,
                num_inference_steps=bench.steps,
                guidance_scale=bench.cfg,
                generator=gens,
            ).images
        )


def _regenerating_row(
    bench: _Bench,
    target: AnyTarget,
    attack: str,
    clean: dict[str, list[bool]],
    found: list[str],
    tick: Any,
) -> AttackRow:
    """Every attempt of an image or concept-vector ``attack`` on every prompt, on the
    steered model and on the base model."""
    config = bench.config
    vector = None
    if attack == "concept-vector":
        vector = concept_vector(bench.encoder, bench.prompts, config.erase)
        goal = bench.encoder.encode([config.neutral]) + config.vector_scale * vector
        banned = banned_tokens(bench.encoder.tokenizer, config.erase)
    details: list[dict[str, Any]] = []
    seconds, hits, base_hits = 0.0, 0, 0
    for p_index, prompt in enumerate(bench.prompts):
        for attempt in range(config.attempts):
            began = time.perf_counter()
            losses: dict[str, float] = {}
            if vector is None:  # the attacker's images: the base model's, of the concept
                seeds = [_seed(config.seed, "images", p_index, attempt, i) for i in
                         range(config.images)]  # fmt: skip
                with target.base():
                    inputs: Any = bench.render(bench.encoder.encode([prompt]), seeds)
                text = None
            else:
                gen = torch.Generator().manual_seed(_seed(config.seed, attack, p_index, attempt))
                result = vector_search(
                    bench.encoder, goal, length=config.tokens, population=config.population,
                    generations=config.budget, banned=banned, generator=gen,
                )  # fmt: skip
                inputs = text = result.text
                found.append(text)
                losses = {"initial_loss": result.initial_loss, "final_loss": result.final_loss}
            shown = bench.judged(_regenerated(bench, target, attack, prompt, inputs, steered=True))
            seconds += time.perf_counter() - began
            base = bench.judged(_regenerated(bench, target, attack, prompt, inputs, steered=False))
            hits, base_hits = hits + sum(shown), base_hits + sum(base)
            details.append(
                {"prompt": prompt, "attempt": attempt, "text": text, "shown": sum(shown),
                 "base_shown": sum(base), "clean_shown": sum(clean[prompt]), **losses}
            )  # fmt: skip
            tick(f"{attack} {prompt!r}")
    images = len(details) * len(bench.eval_seeds)
    return AttackRow(
        attack=attack,
        target=target.name,
        attempts=len(details),
        images=images,
        asr=hits / images,
        clean_rate=_rate(clean),
        budget=0 if attack != "concept-vector" else config.budget,
        seconds_per_attempt=seconds / len(details),
        prompts=details,
        base_asr=base_hits / images,
    )


def _on_target(bench: _Bench, target: AnyTarget) -> tuple[list[AttackRow], dict[str, list[str]]]:
    """The clean rate and each attack's row on the steered model; the typed prompts the
    token and concept-vector searches found."""
    config = bench.config
    with target.steering():
        clean = {p: bench.shown(bench.encoder.encode([p])) for p in bench.prompts}
    attacks = [a for a in config.run_attacks if a in ("soft", "tokens", *REGENERATING)]
    found: dict[str, list[str]] = {"tokens": [], "concept-vector": []}
    if not attacks:
        n = len(bench.prompts)
        rate = _rate(clean)
        return [
            AttackRow("none", target.name, n, n * len(bench.eval_seeds), rate, rate, 0, 0.0)
        ], found
    objectives: dict[str, Objective] = {}  # one per prompt: the base images render once
    total = len(attacks) * len(bench.prompts) * config.attempts
    rows = []
    with ticker(config.progress, "attack", total) as tick:
        for attack in attacks:
            if attack in REGENERATING:
                rows.append(
                    _regenerating_row(bench, target, attack, clean, found["concept-vector"], tick)
                )
            else:
                rows.append(
                    _attack_row(bench, target, attack, clean, objectives, found["tokens"], tick)
                )
    return rows, found


def run_attack(config: AttackConfig, *, pipe: Any | None = None) -> AttackReport:
    """Run ``config``'s attacks; write ``report.json`` and ``report.md`` to ``config.out``."""
    from safety_lora.loading import load_pipeline

    config.out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(config.base, config.device)[0] if pipe is None else pipe
    pipe.set_progress_bar_config(disable=True)
    bench = _Bench.build(config, pipe)
    target = build_target(config, pipe, bench.steps)
    try:
        rows, found = _on_target(bench, target)
    finally:
        target.close()
    evasion = None
    if config.policy is not None:
        from safety_lora.workbench.attack.layer import attack_layer

        evasion, layer_rows = attack_layer(
            config,
            pipe,
            bench.prompts,
            found,
            bench.judge,
            bench.eval_seeds,
            steps=bench.steps,
            guidance_scale=bench.cfg,
        )
        rows += layer_rows
    report = AttackReport(
        config=config.model_dump(mode="json"), target=target.name, rows=rows, evasion=evasion
    )
    write_report(report, config.out)
    return report
