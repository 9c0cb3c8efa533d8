"""Run a comparison: every method, strength and seed on the same prompts; cached per unit.

The run's units, grouped by what they share (:mod:`~safety_lora.workbench.compare.plan`), are
computed here or, with ``workers`` > 1, by a pool of worker processes
(:mod:`~safety_lora.workbench.compare.pool`); each is cached as JSON under ``out/units/`` (so
``resume`` skips finished ones). Then this process measures the per-step costs alone on the
machine (interleaved with the base model, so load cancels out) and writes the report.
"""

from __future__ import annotations

import json
from typing import Any

from safety_lora.progress import ticker
from safety_lora.workbench.compare.config import CompareConfig
from safety_lora.workbench.compare.costs import cost_rows
from safety_lora.workbench.compare.plan import groups
from safety_lora.workbench.compare.pool import compute
from safety_lora.workbench.compare.rows import Results
from safety_lora.workbench.compare.state import Run

__all__ = ["run"]


def _prepare_out(config: CompareConfig) -> None:
    out = config.out
    saved = out / "config.json"
    if saved.is_file():
        if not config.resume:
            raise FileExistsError(
                f"--out {str(out)!r} holds an earlier run; pass --resume or another folder"
            )
        earlier = json.loads(saved.read_text())["resume_key"]
        if earlier != config.resume_key():
            raise ValueError(
                f"--resume: {str(saved)!r} was written with other settings; "
                "only --resume/progress/device/batch size/workers may change"
            )
    out.mkdir(parents=True, exist_ok=True)
    payload = {"config": config.model_dump(mode="json"), "resume_key": config.resume_key()}
    saved.write_text(json.dumps(payload, indent=1))


def run(config: CompareConfig, *, pipe: Any | None = None) -> dict[str, Any]:
    """Run (or resume) the comparison, write every output file and return ``report.json``'s data.

    With ``config.workers`` > 1 (and no ``pipe`` given: a worker loads its own), a pool of
    that many worker processes computes the units; else this process does. The workers are
    spawned: a script calling this with workers must do so under
    ``if __name__ == "__main__":``.
    """
    from safety_lora.workbench.compare.report import write_report

    _prepare_out(config)
    state = Run.open(config, pipe)
    plan = groups(state)
    results = Results()
    with ticker(config.progress, "compare", sum(g.units for g in plan)) as tick:
        if config.workers > 1 and pipe is None:
            for part in compute(config, plan, tick):
                results.extend(part)
        else:
            state.advance = tick
            for group in plan:
                group.work(results)
    results.costs = cost_rows(state, results)
    return write_report(config, results, state.prompts)
