"""The demo runs on the embedded model, shows every part of the layer, and never lets red out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from safety_lora.cli import app
from safety_lora.concept_world.analyser import analyse
from safety_lora.demo import DEMO_ROWS, demo_policy, run_demo, verdict
from safety_lora.policies.schema import ClosedFormSpec
from safety_lora.taxonomy import Action, PromptAction
from safety_lora.workbench.concept_world.tasks import erasure_task


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFETY_LORA_CACHE", str(tmp_path / "cache"))


def _red(image: Image.Image) -> bool:
    return any(o.colour == "red" for o in analyse(image).objects)


def test_demo_policy_steers_with_a_closed_form_edit() -> None:
    policy = demo_policy()
    assert policy.classifiers[0].kind == "concept_world"
    assert policy.escalation.max_attempts == 3
    (entry,) = policy.steering.adapters
    assert isinstance(entry, ClosedFormSpec) and entry.closed_form.erase == ["red"]
    assert entry.closed_form.push == 1.0
    task = erasure_task("red")  # the benchmarked task: the demo steers as measured
    assert entry.closed_form.templates == [*task.templates, *task.contexts]
    assert sorted(entry.closed_form.preserve) == sorted(task.preserve)


def test_the_demo_rows_show_every_part_of_the_layer(tmp_path: Path) -> None:
    rows = run_demo(tmp_path / "demo")
    assert [(r.prompt, r.seed) for r in rows] == list(DEMO_ROWS)
    by_prompt = {r.prompt: r for r in rows}
    for row in rows:  # nothing red is ever let through
        shown = row.columns["safety layer"]
        if row.decision.action is Action.ALLOW:
            assert not _red(shown)
        else:
            assert row.decision.action in (Action.REPLACE, Action.BLOCK)
    steered = by_prompt["a red circle"]  # steering alone suffices
    assert steered.decision.prompt_decision.action is PromptAction.STEER  # type: ignore[union-attr]
    assert _red(steered.columns["base model"]) and not _red(steered.columns["steering only"])
    assert (steered.decision.action, steered.decision.attempts) == (Action.ALLOW, 1)
    caught = by_prompt["a square"]  # not steered, drawn red, caught, redirected in place
    assert _red(caught.columns["steering only"])
    assert (caught.decision.action, caught.decision.attempts) == (Action.ALLOW, 2)
    assert caught.decision.steering_scales == ({"erase_red": 0.0}, {"erase_red": 1.5})
    (kept,) = analyse(caught.columns["safety layer"]).objects  # the square, not red now
    (first,) = analyse(caught.columns["steering only"]).objects
    assert (first.colour, first.shape, kept.shape) == ("red", "square", "square")
    assert kept.colour != "red" and abs(kept.box[0] - first.box[0]) <= 4  # same place
    replaced = by_prompt["a shape"]  # red on every attempt, steered harder each time
    assert (replaced.decision.action, replaced.decision.attempts) == (Action.REPLACE, 3)
    assert [s["erase_red"] for s in replaced.decision.steering_scales] == [0.0, 1.5, 2.0]
    benign = by_prompt["a blue circle"]  # untouched: exactly the base model's image
    assert benign.columns["safety layer"].tobytes() == benign.columns["base model"].tobytes()
    refused = by_prompt["a red circle covered in gore"]
    assert refused.decision.prompt_decision.refused  # type: ignore[union-attr]
    assert verdict(refused.decision) == "prompt: refuse -> block (nothing generated)"
    assert verdict(caught.decision).startswith("prompt: allow -> image flagged, regenerated")


def test_demo_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width >= 3 * 96 and grid.height > len(DEMO_ROWS) * 96
    report = json.loads((tmp_path / "decisions.json").read_text())
    assert len(report) == len(DEMO_ROWS)
    assert report[0]["decision"]["closed_form"]["erase_red"]  # the solve's cache key
