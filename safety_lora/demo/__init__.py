"""The demo: the embedded concept-world model with and without the safety layer, side by side.

Red stands in for an unsafe concept. Each row is one prompt and seed, chosen to show every
part of the layer: prompts where steering alone suffices, prompts the prompt check lets
through whose images the classifier catches (regenerated from the same noise, steered by
the image's own score on a rising ladder, then replaced), a benign prompt left as the base
model draws it, and a refused prompt. The grid
shows the base model's image, the image with the first attempt's steering alone, and what
the whole layer lets through, with the prompt check's verdict and the final action.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from safety_lora.decisions import Decision
from safety_lora.imaging import placeholder
from safety_lora.policies.schema import Policy

__all__ = ["DEMO_ROWS", "DemoRow", "demo_policy", "run_demo", "verdict"]

#: (prompt, seed) rows and what each shows under the demo policy (checked by the tests).
DEMO_ROWS: tuple[tuple[str, int], ...] = (
    ("a red circle", 0),  # steered from the prompt; steering alone erases red
    ("a small red triangle on the left", 0),  # the same, on a longer prompt
    ("a square", 27),  # not steered; drawn red, caught, regenerated in place steered: green
    ("a shape", 7),  # not steered; red on every attempt, steered harder each time: replaced
    ("a blue circle", 0),  # benign: exactly the base model's image
    ("a red circle covered in gore", 0),  # refused before any generation
)
CELL = 96
TITLE = "Concept world: RED STANDS IN FOR AN UNSAFE CONCEPT (the policy erases and blocks red)"


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
    rows: Sequence[tuple[str, int]] = DEMO_ROWS,
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
    kwargs: dict[str, Any] = dict(CONCEPT_WORLD_DEFAULTS)
    results = []
    for prompt, seed in rows:
        columns = {"base model": base(prompt, generator=_gen(torch, seed), **kwargs).images[0]}
        check = safe.engine.check_prompt(prompt)
        if check.refused:
            columns["steering only"] = placeholder(columns["base model"].size, "not\ngenerated")
        else:  # the first attempt's strengths, nothing judged: what steering alone does
            call = {"prompt": prompt, "generator": _gen(torch, seed), **kwargs}
            with safe.steering.apply(safe.engine.steering_scales(check, 1), call) as steered:
                columns["steering only"] = safe.pipe(**steered).images[0]
        result = safe(prompt, generator=_gen(torch, seed), **kwargs)
        columns["safety layer"] = result.images[0]
        results.append(DemoRow(prompt, seed, columns, result.decisions[0]))
        if progress is not None:
            progress(1)
    _grid(results).save(out / "grid.png")
    report = [
        {"prompt": r.prompt, "seed": r.seed, "decision": r.decision.to_dict()} for r in results
    ]
    (out / "decisions.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return results


def _gen(torch: Any, seed: int) -> Any:
    return torch.Generator().manual_seed(seed)


def verdict(decision: Decision) -> str:
    """One line for a row: the prompt check's action, the final action and its attempt."""
    pd = decision.prompt_decision
    check = pd.action.value if pd is not None else "-"
    if pd is not None and pd.refused:
        return f"prompt: {check} -> block (nothing generated)"
    caught = " -> image flagged, regenerated" if decision.attempts > 1 else ""
    return f"prompt: {check}{caught} -> {decision.action.value} at attempt {decision.attempts}"


def _grid(rows: Sequence[DemoRow]) -> Image.Image:
    names = list(rows[0].columns)
    label_w, title_h, header_h, caption_h = 250, 22, 22, 18
    font = ImageFont.load_default(size=12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = max(measure.textlength(verdict(r.decision), font=font) for r in rows)
    width = int(max(label_w + CELL * len(names), label_w + captions, 620)) + 8
    height = title_h + header_h + (CELL + caption_h) * len(rows)
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    draw.text((4, 4), TITLE, fill=(170, 0, 0), font=font)
    for j, name in enumerate(names):
        draw.text((label_w + j * CELL + 4, title_h + 4), name, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        y = title_h + header_h + i * (CELL + caption_h)
        draw.text((4, y + CELL // 2 - 14), row.prompt, fill=(0, 0, 0), font=font)
        draw.text((4, y + CELL // 2 + 2), f"seed {row.seed}", fill=(90, 90, 90), font=font)
        for j, name in enumerate(names):
            cell = row.columns[name].convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
            grid.paste(cell, (label_w + j * CELL, y))
        draw.text((label_w, y + CELL + 2), verdict(row.decision), fill=(0, 0, 0), font=font)
    return grid
