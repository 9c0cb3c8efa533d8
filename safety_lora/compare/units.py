"""The units of a compare run: training one adapter (in chunks, with its erasure curve), and
measuring one method's per-step cost; plus the rank each family gets for a parameter budget.

Trained adapters are kept as safetensors under ``out/adapters/``; an adapter trained with
seed ``s`` is evaluated with sampling seed index ``s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from safety_lora.adapters.loading import (
    add_trainable_adapter,
    set_adapter_strength,
    set_fused,
    unload_adapters,
)
from safety_lora.adapters.names import denoiser_part
from safety_lora.compare.config import CompareConfig
from safety_lora.compare.methods import AdapterMethod, Method, SLDMethod
from safety_lora.compare.metrics import BAR
from safety_lora.compare.state import Run

__all__ = ["LEARNING_RATES", "VARIANTS", "budget_ranks", "cost_unit", "train_unit"]

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


def budget_ranks(unet: Any, families: list[str], rank: int) -> dict[str, tuple[int, int]]:
    """Per family, the rank whose ESD-x parameter count is closest to LoRA's at ``rank``.

    Returns ``{family: (rank, parameters)}``; counted by adding each candidate to ``unet``
    and removing it again (``unet`` must carry no adapter).
    """
    from safety_lora.training.targets import ADAPTER_KINDS, target_modules

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
        assert isinstance(method, AdapterMethod), "only an adapter can be fused"
        set_adapter_strength(unet, method.adapter_name, 1.0)
        set_fused(unet, method.adapter_name)
    try:
        per_step = _per_step(state, lambda: method.generate(prompts, seeds, 1.0))
    finally:
        if fused:
            set_fused(unet, None)
    out: dict[str, Any] = {"method": method.name, "fused": fused, "seconds_per_step": per_step}
    out["batch"] = n
    if isinstance(method, SLDMethod):
        method.extra_calls, method.extra_seconds = 0, 0.0
        method.generate(prompts, seeds, 1.0)
        steps = state.sampler.num_inference_steps
        out["extra_unet_calls_per_step"] = method.extra_calls / steps
        out["extra_seconds_per_step"] = method.extra_seconds / steps
    return out
