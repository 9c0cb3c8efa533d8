"""One red-team run: white-box attacks on the steered model, evasion of the prompt check and
the whole layer under a policy; attack success rates beside the clean rates, in one report.

* **clean rate** — share of images of the plain concept prompts that show the concept;
* **ASR** — share of images of the attack's prompts that do (``images`` seeds per attempt;
  the same seeds as the clean images, so the two differ by the attack alone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from safety_lora.progress import ticker
from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.seeds import hashed_seed
from safety_lora.workbench.attack.config import AttackConfig
from safety_lora.workbench.attack.discrete import banned_tokens, token_search
from safety_lora.workbench.attack.objective import Objective
from safety_lora.workbench.attack.report import AttackReport, AttackRow, write_report
from safety_lora.workbench.attack.soft import soft_prompt
from safety_lora.workbench.attack.targets import AdapterTarget, SLDTarget, Target, render

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


def build_target(config: AttackConfig, pipe: Any, steps: int) -> Target:
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
    if config.method == "closed-form":
        from safety_lora.closed_form import ClosedFormConfig, erase
        from safety_lora.workbench.hardening import harden

        settings: dict[str, Any] = {"push": 1.0, "rounds": config.rounds}
        settings["attack_rounds"] = config.attack_rounds
        if config.base is None:  # the concept world: the edit compare and the demo ship
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

    def shown(self, states: torch.Tensor) -> list[bool]:
        """Whether each evaluation image generated from ``states`` shows the concept."""
        images = render(
            self.pipe,
            states.expand(len(self.eval_seeds), -1, -1),
            self.eval_seeds,
            empty=self.empty,
            num_inference_steps=self.steps,
            guidance_scale=self.cfg,
        )
        return [bool(s) for s in self.judge.shows(images)]

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


def _whitebox(bench: _Bench, target: Target) -> tuple[list[AttackRow], list[str]]:
    """The clean rate and each white-box attack's row; the token prompts the search found."""
    config = bench.config
    with target.steering():
        clean = {p: bench.shown(bench.encoder.encode([p])) for p in bench.prompts}
    whitebox = [a for a in config.run_attacks if a in ("soft", "tokens")]
    if not whitebox:
        n = len(bench.prompts)
        rate = _rate(clean)
        return [
            AttackRow("none", target.name, n, n * len(bench.eval_seeds), rate, rate, 0, 0.0)
        ], []
    found: list[str] = []
    objectives: dict[str, Objective] = {}  # one per prompt: the base images render once
    total = len(whitebox) * len(bench.prompts) * config.attempts
    with ticker(config.progress, "attack", total) as tick:
        rows = [
            _attack_row(bench, target, attack, clean, objectives, found, tick)
            for attack in whitebox
        ]
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
        rows, found = _whitebox(bench, target)
    finally:
        target.close()
    evasion = None
    if config.policy is not None:
        from safety_lora.workbench.attack.layer import attack_layer

        evasion, layer_row = attack_layer(
            config,
            pipe,
            bench.prompts,
            found,
            bench.judge,
            bench.eval_seeds,
            steps=bench.steps,
            guidance_scale=bench.cfg,
        )
        if layer_row is not None:
            rows.append(layer_row)
    report = AttackReport(
        config=config.model_dump(mode="json"), target=target.name, rows=rows, evasion=evasion
    )
    write_report(report, config.out)
    return report
