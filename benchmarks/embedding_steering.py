"""Text-embedding steering (per token, after Semantic Surgery) erasing red on the concept world.

    python benchmarks/embedding_steering.py [--seeds 8] [--strengths 0 1 2]
        [--results PATH | --no-results]

The policy's ``steering.text`` entry for ``red`` (anchor: the empty prompt, the default
threshold) through the runtime's steering owner, at each strength, and the authors' form
(``E - alpha * (E(red) - E(''))`` on every position, their threshold 0.06 and temperature 0.02)
at strength 1 for comparison: for prompts naming red ("a red circle"), paraphrases ("a crimson
square", not named in the entry), two-object prompts with a neighbour ("a red circle and a
green square") and neighbour colours alone ("a blue circle", "a green square"): red's
presence measured in the prompt embedding, the share of prompts with a steered token, the
share of images showing red, the share whose shapes are drawn as asked, and the neighbour's
object (two-object prompts) or its colour (neighbour colours) kept. Then its cost: the time to
encode the concept directions when the pipeline is wrapped, and the UNet calls per pipeline
call, base and steered.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from _report import Report, add_arguments, first_paragraph
from rich.console import Console

from safety_lora.concept_world.world import SHAPES
from safety_lora.models import concept_world
from safety_lora.steering import Steering, embedding_method, single
from safety_lora.workbench.concept_world.evaluate import Generation, evaluate
from safety_lora.workbench.concept_world.tasks import erasure_task

NAME = "embedding_steering"
TASK = erasure_task("red")
GROUPS: dict[str, tuple[str, ...]] = {
    "red (named)": TASK.target_prompts,
    "paraphrases": TASK.paraphrase_prompts,
    "red + neighbour": TASK.neighbour_prompts[::3],
    "blue, green (neighbour colours)": tuple(
        f"a {c} {s}" for c in ("blue", "green") for s in SHAPES
    ),
}


def _share(values: Sequence[bool]) -> str:
    return f"{100 * sum(values) / len(values):.0f}%" if values else "-"


def _kept(group: str, results: list[Generation]) -> str:
    """The neighbour object kept (two-object prompts) or blue kept (blue prompts)."""
    if group == "red + neighbour":
        return _share([TASK.neighbour_kept(r) for r in results])
    if group.startswith("blue, green"):
        return _share([bool(r.colour_correct) for r in results])
    return "-"


@contextmanager
def paper_form(pipe: Any, strength: float) -> Iterator[None]:
    """The authors' update on ``pipe``'s prompt embeddings for the block: every position moved by
    ``strength * alpha * (E(red) - E(''))``, ``alpha`` from the mean cosine over positions."""
    encode = type(pipe).encode_prompt
    delta = encode(pipe, ["red", ""], "cpu", 1, False)[0]
    delta = delta[0] - delta[1]

    def steered(*args: Any, **kwargs: Any) -> Any:
        hidden, negative = encode(pipe, *args, **kwargs)
        presence = F.cosine_similarity(hidden, delta[None], dim=-1).mean(dim=-1)
        alpha = torch.sigmoid((presence - 0.06) / 0.02) * (presence >= 0.06)
        return hidden - strength * alpha[:, None, None] * delta, negative

    pipe.encode_prompt = steered
    try:
        yield
    finally:
        del pipe.encode_prompt


def quality_table(pipe: Any, steering: Steering, seeds: list[int], strengths: list[float],
                  report: Report) -> None:  # fmt: skip
    embedding = steering.embedding
    assert embedding is not None
    table = report.table(
        f"erase red by text-embedding steering: {len(seeds)} images per prompt",
        ["form", "prompts", "strength", "images", "presence", "steered", "red shown",
         "shape kept", "other kept"],
    )  # fmt: skip
    runs = [("per token (ours)", s) for s in strengths] + [("authors' (paper)", 1.0)]
    for group, prompts in GROUPS.items():
        hidden = pipe.encode_prompt(list(prompts), "cpu", 1, False)[0]
        presence = embedding.presence(hidden)[:, 0]
        steered = _share((presence >= embedding.threshold).tolist())
        for form, strength in runs:
            ours = form.endswith("(ours)")
            with steering.at({"embedding": strength}) if ours else paper_form(pipe, strength):
                results = evaluate(pipe, prompts, seeds=seeds)
            table.add_row(
                form,
                group,
                f"{strength:g}",
                len(results),
                f"{presence.mean().item():.3f}" if ours else "-",
                steered if ours else "-",
                _share([TASK.shown(r) for r in results]),
                _share([bool(r.shape_correct) for r in results]),
                _kept(group, results),
            )
    table.note(
        "presence: mean over the group's prompts of red's presence (the largest cosine between "
        "a token and red's direction); steered: prompts with a token at or above the threshold "
        f"{embedding.threshold:g} (the others are left exactly as they are); other kept: the "
        "neighbour object drawn as asked (two-object prompts) or its colour kept (neighbour "
        "colours). The authors' form is measured at strength 1 (their setting) on the same "
        "prompts and seeds."
    )


def cost_table(seeds: list[int], repeats: int, report: Report) -> None:
    pipe = concept_world()
    wrap = []
    for _ in range(repeats):
        began = time.perf_counter()
        steering = Steering(pipe, single(embedding_method("red")))
        wrap.append(time.perf_counter() - began)
    calls = [0]
    pipe.unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    per_call = {}
    for strength in (0.0, 1.0):
        calls[0] = 0
        with steering.at({"embedding": strength}):
            evaluate(pipe, ["a red circle"], seeds=seeds)  # one pipeline call, len(seeds) images
        per_call[strength] = calls[0]
    table = report.table(
        "cost on the concept world, 1 thread",
        ["directions encoded at wrap (median s)", "UNet calls per pipeline call, base",
         "UNet calls per pipeline call, steered"],
    )  # fmt: skip
    table.add_row(f"{statistics.median(wrap):.3f}", per_call[0.0], per_call[1.0])
    table.note(
        f"one pipeline call of {len(seeds)} images ('a red circle', the shipped sampling "
        "settings); a UNet call is one batched forward pass."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="images per prompt")
    parser.add_argument(
        "--strengths", type=float, nargs="+", default=[0.0, 1.0, 2.0],
        help="steering strengths to measure",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=5, help="wrap-time repeats")
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "Text-embedding steering (per token)", first_paragraph(__doc__))
    torch.set_num_threads(1)
    console = Console(width=150)
    seeds = list(range(args.seeds))
    pipe = concept_world()
    steering = Steering(pipe, single(embedding_method("red")))
    with torch.no_grad():
        quality_table(pipe, steering, seeds, args.strengths, report)
        cost_table(seeds, args.repeats, report)
    for table in report.tables:
        console.print(table.rich())
    report.save(args)


if __name__ == "__main__":
    main()
