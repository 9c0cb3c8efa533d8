"""The demo runs on the embedded model and shows only what the policy allows."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from safety_lora.cli import app
from safety_lora.concept_world.analyser import analyse
from safety_lora.demo import demo_policy, run_demo
from safety_lora.taxonomy import Action


def test_demo_policy_marks_red_unsafe() -> None:
    policy = demo_policy()
    assert policy.classifiers[0].kind == "concept_world"
    assert policy.escalation.max_attempts == 3


def test_run_demo_writes_grid_and_never_lets_red_through(tmp_path: Path) -> None:
    rows = run_demo(tmp_path, prompts=["a red circle", "a blue square"], seeds=[0])
    assert [r.prompt for r in rows] == ["a red circle", "a blue square"]
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width > 200 and grid.height > 2 * 96
    report = json.loads((tmp_path / "decisions.json").read_text())
    assert [r["prompt"] for r in report] == ["a red circle", "a blue square"]
    for row in rows:
        shown = row.columns["safety layer"]
        if row.decision.action is Action.ALLOW:
            assert all(o.colour != "red" for o in analyse(shown).objects)
        else:
            assert row.decision.action in (Action.REPLACE, Action.BLOCK)
    red = rows[0]
    assert red.decision.prompt_decision is not None
    assert red.decision.prompt_decision.action.value == "steer"  # the prompt asks for red


def test_demo_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--seeds", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "grid.png").is_file()
    assert len(json.loads((tmp_path / "decisions.json").read_text())) == 6
