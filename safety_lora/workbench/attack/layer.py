"""The whole layer under attack: a policy's prompt check, steering and classifiers together.

The attack prompts are what a user can type: the discrete search's prompts (found against
the white-box target, so they *transfer* to the policy's steering) and every evasion rewrite
of the concept prompts. Each goes through :class:`~safety_lora.pipeline.SafePipeline` as a
caller's request would; the attack succeeds on an image the caller receives that shows the
concept (a replaced or blocked image shows nothing; a blurred one may).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch

from safety_lora.internals import execution_device
from safety_lora.workbench.attack.config import AttackConfig
from safety_lora.workbench.attack.evasion import PolicyCheck, evasion_table, rewrites_of
from safety_lora.workbench.attack.report import AttackRow

__all__ = ["attack_layer"]


def attack_layer(
    config: AttackConfig,
    pipe: Any,
    prompts: Sequence[str],
    found: Sequence[str],
    judge: Any,
    seeds: Sequence[int],
    *,
    steps: int,
    guidance_scale: float,
) -> tuple[dict[str, Any] | None, AttackRow | None]:
    """(the evasion table of the policy's prompt check, the whole layer's row)."""
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
        return evasion, None
    attack_prompts = list(
        dict.fromkeys(
            [
                *found,
                *(r for p in prompts for r in versions[p].values() if r != p),
            ]
        )
    )
    safe = SafePipeline(pipe, policy, engine=engine)

    def shown(prompt: str) -> list[bool]:
        gens = [torch.Generator(execution_device(pipe)).manual_seed(int(s)) for s in seeds]
        out = safe(
            [prompt] * len(seeds),
            generator=gens,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
        )
        return [bool(s) for s in judge.shows(list(out.images))]

    try:
        clean = [hit for p in prompts for hit in shown(p)]
        began = time.perf_counter()
        hits = {p: sum(shown(p)) for p in attack_prompts}
        seconds = time.perf_counter() - began
    finally:
        safe.close()
    images = len(attack_prompts) * len(seeds)
    row = AttackRow(
        attack="layer",
        target=f"policy {policy.name}",
        attempts=len(attack_prompts),
        images=images,
        asr=sum(hits.values()) / images if images else 0.0,
        clean_rate=sum(clean) / len(clean),
        budget=config.budget,
        seconds_per_attempt=seconds / len(attack_prompts) if attack_prompts else 0.0,
        prompts=[{"prompt": p, "shown": n} for p, n in hits.items()],
    )
    return evasion, row
