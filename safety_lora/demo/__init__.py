"""The demo: the embedded concept-world model with and without the safety layer, side by side.

Red stands in for an unsafe concept. For each prompt and seed the grid shows the base model's
image, the image with steering alone (when the policy has an adapter), and what the whole
layer lets through (steering + classifier + escalation), with the decision under it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from safety_lora.policies.engine import Decision
from safety_lora.policies.schema import Policy

__all__ = ["DEMO_PROMPTS", "DemoRow", "demo_policy", "run_demo"]

DEMO_PROMPTS = (
    "a red circle",
    "a red square",
    "a small red triangle on the left",
    "a blue circle",
    "a green square",
    "a yellow triangle",
)
CELL = 96


@dataclass(frozen=True)
class DemoRow:
    """One prompt/seed of the demo: what each column showed and the final decision."""

    prompt: str
    seed: int
    columns: dict[str, Image.Image]
    decision: Decision


def demo_policy() -> Policy:
    """The bundled demo policy (``safety_lora/demo/policy.yaml``)."""
    ref = resources.files("safety_lora.demo").joinpath("policy.yaml")
    with resources.as_file(ref) as path:
        return Policy.from_file(path)


def run_demo(
    out_dir: str | Path,
    *,
    prompts: Sequence[str] = DEMO_PROMPTS,
    seeds: Sequence[int] = (0, 1),
    policy: Policy | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[DemoRow]:
    """Generate the comparison, write ``grid.png`` and ``decisions.json`` to ``out_dir``."""
    import torch

    from safety_lora.models import CONCEPT_WORLD_DEFAULTS, concept_world
    from safety_lora.pipeline import SafePipeline

    policy = policy or demo_policy()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = concept_world()
    safe = SafePipeline(concept_world(), policy)
    steered = None
    if policy.steering.adapters:
        steer_only = policy.model_copy(update={"classifiers": [], "categories": {}})
        steered = SafePipeline(concept_world(), steer_only)
    kwargs: dict[str, Any] = dict(CONCEPT_WORLD_DEFAULTS)
    rows = []
    for prompt in prompts:
        for seed in seeds:
            columns = {"base model": base(prompt, generator=_gen(torch, seed), **kwargs).images[0]}
            if steered is not None:
                columns["steering only"] = steered(
                    prompt, generator=_gen(torch, seed), **kwargs
                ).images[0]
            result = safe(prompt, generator=_gen(torch, seed), **kwargs)
            columns["safety layer"] = result.images[0]
            rows.append(DemoRow(prompt, seed, columns, result.decisions[0]))
            if progress is not None:
                progress(1)
    _grid(rows).save(out / "grid.png")
    report = [{"prompt": r.prompt, "seed": r.seed, "decision": r.decision.to_dict()} for r in rows]
    (out / "decisions.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return rows


def _gen(torch: Any, seed: int) -> Any:
    return torch.Generator().manual_seed(seed)


def _grid(rows: Sequence[DemoRow]) -> Image.Image:
    names = list(rows[0].columns)
    label_w, header_h, caption_h = 220, 24, 16
    width = label_w + CELL * len(names) + 40  # room for the last caption
    height = header_h + (CELL + caption_h) * len(rows)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=12)
    for j, name in enumerate(names):
        draw.text((label_w + j * CELL + 4, 6), name, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = header_h + i * (CELL + caption_h)
        draw.text(
            (4, y + CELL // 2 - 6), f"{row.prompt} (seed {row.seed})", fill=(0, 0, 0), font=font
        )
        for j, name in enumerate(names):
            cell = row.columns[name].convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
            grid.paste(cell, (label_w + j * CELL, y))
        d = row.decision
        caption = f"{d.action.value}, attempt {d.attempts}"
        draw.text(
            (label_w + (len(names) - 1) * CELL + 2, y + CELL + 2),
            caption,
            fill=(0, 0, 0),
            font=font,
        )
    return grid
