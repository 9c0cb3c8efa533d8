"""``safety-lora compare`` options: validation errors name the option and value."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from safety_lora.cli import compare


def _app() -> typer.Typer:
    app = typer.Typer()
    compare.register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps `compare` as a subcommand
    return app


def test_base_needs_a_classifier(tmp_path: Path) -> None:
    args = ["compare", "--erase", "nudity", "--base", "some/model", "--out", str(tmp_path)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2
    assert "classifier" in result.output


def test_unknown_sld_preset_and_family(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        _app(), ["compare", "--erase", "red", "--sld", "huge", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "huge" in result.output
    result = runner.invoke(
        _app(), ["compare", "--erase", "red", "--families", "dora", "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "dora" in result.output


def test_classifier_option_parses_kind_or_json() -> None:
    assert compare._classifier("nudenet") == {"kind": "nudenet"}
    assert compare._classifier('{"kind": "nudenet", "min_score": 0.3}') == {
        "kind": "nudenet",
        "min_score": 0.3,
    }
