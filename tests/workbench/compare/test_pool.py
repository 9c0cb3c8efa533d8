"""The worker pool: a failed or interrupted run stops every worker and raises the error."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from safety_lora.adapters.state import AdapterFormatError
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.compare import CompareConfig, run
from safety_lora.workbench.compare.plan import groups
from safety_lora.workbench.compare.pool import compute
from safety_lora.workbench.compare.state import Run

pytestmark = pytest.mark.slow  # make test-fast leaves it out


def _config(out: Path, **overrides: Any) -> CompareConfig:
    fields: dict[str, Any] = {
        "erase": "red", "families": [], "seeds": 1, "stability_seeds": 1, "steps": 1,
        "prompts_per_concept": 1, "num_inference_steps": 2, "strengths": (1.0,),
        "sld_presets": [], "regularity": False, "lr_scales": [], "closed_form": False,
        "kohya": False, "attack_budget": 0, "workers": 2, "out": out, "progress": False,
        **overrides,
    }  # fmt: skip
    return CompareConfig(**fields)


def test_a_failing_worker_stops_the_run(tmp_path: Path) -> None:
    """The corrupt file's group goes first (the longest); its error ends the run."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    config = _config(tmp_path / "cmp", adapters=[bad])
    with pytest.raises(AdapterFormatError, match="not a readable safetensors file"):
        run(config)
    assert not multiprocessing.active_children(), [
        (p.name, p.pid, p.exitcode) for p in multiprocessing.active_children()
    ]  # the other worker was stopped
    assert (config.out / "logs" / "worker-2.log").is_file()
    assert not (config.out / "report.json").exists()


def test_an_interrupted_run_stops_its_workers(tmp_path: Path) -> None:
    config = _config(tmp_path / "cmp", families=["lora"])
    plan = groups(Run.open(config, tiny_pipeline()))  # the groups need no particular model
    done: list[str] = []

    def interrupt(name: str) -> None:
        done.append(name)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compute(config, plan, interrupt)
    assert len(done) == 1
    assert not multiprocessing.active_children(), [
        (p.name, p.pid, p.exitcode) for p in multiprocessing.active_children()
    ]
