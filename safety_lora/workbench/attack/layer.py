"""The whole layer under attack: a policy's prompt check, steering and classifiers together.

The ``layer`` row's attack prompts are what a user can type: the discrete search's prompts
(found against the white-box target, so they *transfer* to the policy's steering) and every
evasion rewrite of the concept prompts. The image attacks send what a caller can send: the
``neutral`` prompt with latents inverted through the *base* model (the public weights an
attacker holds; the deployment's steering is not theirs to invert through), or with the
base model's image of the concept to the image-to-image pipeline; the concept-vector attack
sends the prompts its search found. Each goes through
:class:`~safety_lora.pipeline.SafePipeline` as a caller's request would; the attack succeeds
on an image the caller receives that shows the concept (a replaced or blocked image shows
nothing; a blurred one may). Their base ASR is the same inputs on the plain pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import torch

from safety_lora.conditioning import unet_eps
from safety_lora.internals import execution_device
from safety_lora.prompt_encoder import PromptEncoder
from safety_lora.seeds import hashed_seed
from safety_lora.workbench.attack.config import AttackConfig
from safety_lora.workbench.attack.evasion import PolicyCheck, evasion_table, rewrites_of
from safety_lora.workbench.attack.inversion import (
    ddim_invert,
    ddim_sampling,
    encode_images,
    img2img_pipeline,
)
from safety_lora.workbench.attack.report import AttackRow
from safety_lora.workbench.attack.targets import render

__all__ = ["attack_layer"]


def attack_layer(
    config: AttackConfig,
    pipe: Any,
    prompts: Sequence[str],
    found: Mapping[str, Sequence[str]],
    judge: Any,
    seeds: Sequence[int],
    *,
    steps: int,
    guidance_scale: float,
) -> tuple[dict[str, Any] | None, list[AttackRow]]:
    """(the evasion table of the policy's prompt check, the whole layer's rows: ``layer``'s
    and one per image or concept-vector attack of the run)."""
    from safety_lora.pipeline import SafePipeline
    from safety_lora.policies import Policy, PolicyEngine

    assert config.policy is not None
    policy = Policy.load(config.policy)
    engine = PolicyEngine(policy)
    check = PolicyCheck(engine)
    versions = {p: rewrites_of(check, p, seed=config.seed) for p in prompts}
    evasion = None
    if "evasion" in config.run_attacks:
        flagged, table = evasion_table(check, prompts, seed=config.seed, versions=versions)
        evasion = {
            "check": f"policy {policy.name}",
            "prompts": len(prompts),
            "flagged": flagged,
            "rows": [{**asdict(r), "rate": r.rate} for r in table],
        }
    if "layer" not in config.run_attacks:
        return evasion, []
    attack_prompts = list(
        dict.fromkeys(
            [
                *found.get("tokens", ()),
                *(r for p in prompts for r in versions[p].values() if r != p),
            ]
        )
    )
    probes = {
        attack: _probes(config, pipe, attack, prompts, found, seeds, steps, guidance_scale)
        for attack in ("inversion", "img2img", "concept-vector")
        if attack in config.run_attacks
    }
    edit = img2img_pipeline(pipe) if "img2img" in probes else pipe

    def call(run: Callable[..., Any], kwargs: dict[str, Any], latents: bool = False) -> list[bool]:
        gens = [torch.Generator(execution_device(pipe)).manual_seed(int(s)) for s in seeds]
        with ddim_sampling(pipe) if latents else nullcontext():
            out = run(
                generator=gens, num_inference_steps=steps, guidance_scale=guidance_scale, **kwargs
            )
        return [bool(s) for s in judge.shows(list(out.images))]

    # The base model's answer to each probe, before the layer's steering is on the UNet.
    base = {
        attack: [call(edit if attack == "img2img" else pipe, kw, "latents" in kw) for _, kw in runs]
        for attack, runs in probes.items()
    }
    safe = SafePipeline(pipe, policy, engine=engine)
    safe_edit = safe.derive(edit) if edit is not pipe else safe

    def shown(prompt: str) -> list[bool]:
        return call(safe, {"prompt": [prompt] * len(seeds)})

    try:
        clean = [hit for p in prompts for hit in shown(p)]
        began = time.perf_counter()
        hits = {p: sum(shown(p)) for p in attack_prompts}
        seconds = time.perf_counter() - began
        probed = {
            attack: [
                call(safe_edit if attack == "img2img" else safe, kw, "latents" in kw)
                for _, kw in runs
            ]
            for attack, runs in probes.items()
        }
    finally:
        safe.close()
    images = len(attack_prompts) * len(seeds)
    target = f"policy {policy.name}"
    clean_rate = sum(clean) / len(clean)
    rows = [
        AttackRow(
            attack="layer",
            target=target,
            attempts=len(attack_prompts),
            images=images,
            asr=sum(hits.values()) / images if images else 0.0,
            clean_rate=clean_rate,
            budget=config.budget,
            seconds_per_attempt=seconds / len(attack_prompts) if attack_prompts else 0.0,
            prompts=[{"prompt": p, "shown": n} for p, n in hits.items()],
        )
    ]
    for attack, runs in probes.items():
        total = len(runs) * len(seeds)
        rows.append(
            AttackRow(
                attack=attack,
                target=target,
                attempts=len(runs),
                images=total,
                asr=sum(map(sum, probed[attack])) / total if total else 0.0,
                clean_rate=clean_rate,
                budget=config.budget if attack == "concept-vector" else 0,
                seconds_per_attempt=0.0,
                prompts=[
                    {"prompt": label, "shown": sum(hit), "base_shown": sum(b)}
                    for (label, _), hit, b in zip(runs, probed[attack], base[attack], strict=True)
                ],
                base_asr=sum(map(sum, base[attack])) / total if total else 0.0,
            )
        )
    return evasion, rows


def _probes(
    config: AttackConfig,
    pipe: Any,
    attack: str,
    prompts: Sequence[str],
    found: Mapping[str, Sequence[str]],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
) -> list[tuple[str, dict[str, Any]]]:
    """What a caller sends for ``attack``: (the concept prompt or prompt found, the call's
    arguments) per attempt; latents are inverted through the base model."""
    n = len(seeds)
    if attack == "concept-vector":
        return [(text, {"prompt": [text] * n}) for text in dict.fromkeys(found[attack])]
    encoder = PromptEncoder(pipe)
    neutral, empty = encoder.encode([config.neutral]), encoder.encode([""])
    out = []
    for p_index, prompt in enumerate(prompts):
        for attempt in range(config.attempts):
            own = [
                hashed_seed("safety-lora-attack", config.seed, "images", p_index, attempt, i)
                for i in range(n)
            ]
            images = render(
                pipe, encoder.encode([prompt]).expand(n, -1, -1), own, empty=empty,
                num_inference_steps=steps, guidance_scale=guidance_scale,
            )  # fmt: skip
            kwargs: dict[str, Any] = {"prompt": [config.neutral] * n}
            if attack == "img2img":
                kwargs |= {"image": list(images), "strength": config.img2img_strength}
            else:
                x0 = encode_images(pipe, images)
                kwargs["latents"] = ddim_invert(
                    pipe, lambda x, t, s: unet_eps(pipe, x, t, s), x0, neutral, empty=empty,
                    num_inference_steps=steps, guidance_scale=guidance_scale,
                )  # fmt: skip
            out.append((prompt, kwargs))
    return out
