"""Solved on two-object contexts too, the closed-form edit keeps the object beside the concept.

Solved on single objects alone, the push also moves the tokens after "red" (the causal text
encoder read them after it), so "a red circle and a blue square" loses its blue square.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from safety_lora.adapters import load_adapter
from safety_lora.closed_form import ClosedFormConfig, erase
from safety_lora.models import concept_world
from safety_lora.workbench.concept_world.evaluate import evaluate
from safety_lora.workbench.concept_world.tasks import erasure_task

pytestmark = pytest.mark.slow  # make test-fast leaves it out


def test_two_object_contexts_keep_the_neighbour(tmp_path: Path) -> None:
    # Two seeds, not one: 36 neighbour images per edit. The least that passes (31/36 kept, 8
    # more than single) is a difference at one-sided Fisher p = 0.03, and 31/36 has a 95 %
    # lower bound of 0.73; with 18 images the least that passes (16/18 vs 12/18) is p = 0.11,
    # no evidence, and seed 0 alone gives 16/18 for contexts: on the bound. (Seeds 0 and 1
    # give 33/36 and 23/36.)
    torch.set_num_threads(1)
    pipe = concept_world()
    task = erasure_task("red")
    kept, shown = {}, {}
    for name, templates in (
        ("single", task.templates),
        ("contexts", task.templates + task.contexts),
    ):
        config = ClosedFormConfig(
            erase=["red"],
            templates=list(templates),
            preserve=list(task.preserve),
            push=1.0,
            lam=0.5,  # the demo's setting, where the contexts matter most
        )
        path = tmp_path / f"{name}.safetensors"
        erase(config, out=path, pipe=pipe)
        load_adapter(pipe.unet, path, adapter_name="erase")
        try:
            near = evaluate(pipe, task.neighbour_prompts, seeds=[0, 1])  # strength 1.0
            kept[name] = sum(map(task.neighbour_kept, near)) / len(near)
            target = evaluate(pipe, task.target_prompts, seeds=[0, 1])
            shown[name] = sum(map(task.shown, target)) / len(target)
        finally:
            pipe.unet.unload_lora()
    assert shown == {"single": 0.0, "contexts": 0.0}  # red erased either way
    assert kept["contexts"] >= 0.85 and kept["contexts"] >= kept["single"] + 0.2, kept
