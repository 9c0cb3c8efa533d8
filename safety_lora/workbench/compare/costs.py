"""Per-step inference cost of every method against the base model, measured interleaved.

Each method's batch is timed in pairs with the base model's (A B, then B A, ...), after one
warm-up each, so that load on a shared machine falls on both alike; the row gives the mean
ratio and its 95% bootstrap interval over the pairs. The base model timed against itself
is the control row: its interval is the noise floor. Adapters are timed as the wrapper runs
them: :class:`~safety_lora.steering.Steering` in ``dynamic`` mode (peft's layers at call
time) and in ``fused`` mode (merged into the weights, wrappers out of the forward path).
This runs alone, after every worker has finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from safety_lora.adapters.names import denoiser_part
from safety_lora.workbench.compare.methods import (
    BaseModel,
    ClassifierOnly,
    NegativePrompt,
    SLDMethod,
    TextEmbeddingMethod,
)
from safety_lora.workbench.compare.metrics import mean_interval
from safety_lora.workbench.compare.rows import Cost, Results
from safety_lora.workbench.compare.state import Run, slug
from safety_lora.workbench.compare.units import embedding_anchor

__all__ = ["cost_rows"]

#: Images per timed call.
_BATCH = 4


def _pairs(
    base: Callable[[], object], call: Callable[[], object], n: int
) -> list[tuple[float, float]]:
    """``n`` (base seconds, method seconds) pairs, the order alternating."""
    base(), call()
    out = []
    for i in range(n):
        first, second = (base, call) if i % 2 == 0 else (call, base)
        began = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        end = time.perf_counter()
        a, b = middle - began, end - middle
        out.append((a, b) if i % 2 == 0 else (b, a))
    return out


@contextmanager
def _steered(
    state: Run, path: Path, mode: str
) -> Iterator[Callable[[list[str], list[int]], object]]:
    """Generation through the wrapper's steering of ``path`` at strength 1 in ``mode``."""
    from safety_lora.policies.schema import AdapterSpec, SteeringPolicy
    from safety_lora.steering import Steering
    from safety_lora.taxonomy import Category

    spec = AdapterSpec(path=path, categories=[Category.SEXUAL], name="compare_cost")
    steering = Steering(state.pipe, SteeringPolicy(adapters=[spec], mode=mode))  # type: ignore[arg-type]
    try:

        def generate(prompts: list[str], seeds: list[int]) -> object:
            with steering.apply({}, {}):
                return state.sampler.sample(prompts, seeds)

        yield generate
    finally:
        steering.close()


def _row(
    state: Run, name: str, mode: str, generate: Callable[[list[str], list[int]], object]
) -> Cost:
    n = min(_BATCH, len(state.prompts.target))
    prompts, seeds = list(state.prompts.target[:n]), list(range(n))
    pairs = _pairs(
        lambda: state.sampler.sample(prompts, seeds),
        lambda: generate(prompts, seeds),
        state.config.cost_pairs,
    )
    steps = state.sampler.num_inference_steps
    ratios = [b / a for a, b in pairs]
    mean, (lo, hi) = sum(ratios) / len(ratios), mean_interval(ratios)
    return Cost(
        method=name,
        mode=mode,
        seconds_per_step=sum(b for _, b in pairs) / len(pairs) / steps,
        base_seconds_per_step=sum(a for a, _ in pairs) / len(pairs) / steps,
        vs_base=mean,
        vs_base_ci=(lo, hi),
        pairs=len(pairs),
        batch=n,
    )


def cost_rows(state: Run, results: Results) -> list[Cost]:
    """One row per method (adapters: dynamic and fused, from the seed-0 adapters), each a
    cached unit."""
    from safety_lora.progress import ticker

    config, sampler = state.config, state.sampler
    free: list[Any] = [BaseModel(sampler), NegativePrompt(sampler, config.erase)]
    free += [SLDMethod(sampler, config.erase, p) for p in config.sld_presets]
    if config.embedding_strengths:
        free.append(TextEmbeddingMethod(sampler, config.erase, anchor=embedding_anchor(config)))
    free.append(ClassifierOnly(sampler, state.check))
    main = [t for t in results.training if t.role == "adapter" and t.seed == 0]
    files = [(t.method, Path(t.path)) for t in main if t.budget == config.ranks[0]]
    files += [(s.method, Path(s.path)) for s in results.solves if s.path is not None]
    files += [(f"file {p.stem}", p) for p in config.adapters]
    rows = []
    with ticker(config.progress, "compare (costs)", len(free) + 2 * len(files)) as tick:
        state.advance = tick  # each row is a cached unit: a resumed run times nothing again
        for method in free:
            name = "base (control)" if method.kind == "base" else method.name
            compute = partial(_free_row, state, method)
            rows.append(state.cached(f"cost/{slug(name)}", Cost, compute))
        for name, path in files:
            for mode in ("dynamic", "fused"):
                compute = partial(_file_row, state, name, path, mode)
                rows.append(state.cached(f"cost/{slug(name)}/{mode}", Cost, compute))
    return rows


def _free_row(state: Run, method: Any) -> Cost:
    """A training-free method's row (SLD's and text embedding's with their extra UNet calls
    per step)."""
    sampler = state.sampler
    if method.kind == "base":  # sampled every time (BaseModel keeps its images)
        return _row(state, "base (control)", "", sampler.sample)
    row = _row(state, method.name, "", partial(method.generate, strength=1.0))
    if isinstance(method, SLDMethod):
        method.extra_calls = 0
        method.generate(list(state.prompts.target[:1]), [0], 1.0)
        extra = method.extra_calls / sampler.num_inference_steps
        row = row.model_copy(update={"extra_unet_calls_per_step": extra})
    if isinstance(method, TextEmbeddingMethod):
        steered = _denoiser_calls(state, partial(method.generate, strength=1.0))
        extra = (steered - _denoiser_calls(state, sampler.sample)) / sampler.num_inference_steps
        row = row.model_copy(update={"extra_unet_calls_per_step": extra})
    return row


def _denoiser_calls(state: Run, generate: Callable[[list[str], list[int]], object]) -> int:
    """The denoiser's forward passes in one ``generate`` call of one image."""
    denoiser = getattr(state.pipe, denoiser_part(state.pipe))
    calls = [0]
    hook = denoiser.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        generate(list(state.prompts.target[:1]), [0])
    finally:
        hook.remove()
    return calls[0]


def _file_row(state: Run, name: str, path: Path, mode: str) -> Cost:
    """An adapter file's row, steered as the wrapper runs it in ``mode``."""
    with _steered(state, path, mode) as steered:
        return _row(state, name, mode, steered)
