"""``safety-lora compare`` options: validation errors name the option and value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from safety_lora.workbench.cli import compare
from safety_lora.workbench.compare import CompareConfig
from safety_lora.workbench.compare.config import QUICK


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


def test_quick_sets_its_fields_and_explicit_options_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[CompareConfig] = []

    def fake_run(config: CompareConfig) -> dict[str, str]:
        seen.append(config)
        return {"reading": "ok"}

    monkeypatch.setattr("safety_lora.workbench.compare.run", fake_run)
    args = ["compare", "--erase", "red", "--out", str(tmp_path), "--quick", "--seeds", "3"]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.seeds == 3  # given: wins over --quick's 2
    assert {k: getattr(config, k) for k in QUICK if k != "seeds"} == {
        k: v for k, v in QUICK.items() if k != "seeds"
    }
    result = CliRunner().invoke(_app(), ["compare", "--erase", "red", "--out", str(tmp_path)])
    assert result.exit_code == 0
    default = seen[-1]
    assert (default.seeds, default.lr_scales, default.steps) == (5, [2.0], None)
    assert default.workers == (2 if (os.cpu_count() or 1) > 1 else 1)


def test_embedding_strengths_and_attacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[CompareConfig] = []

    def fake_run(config: CompareConfig) -> dict[str, str]:
        seen.append(config)
        return {"reading": "ok"}

    monkeypatch.setattr("safety_lora.workbench.compare.run", fake_run)
    runner, out = CliRunner(), ["--out", str(tmp_path)]
    given = ["--embedding", "1,3", "--attack", "soft", "--attack", "concept-vector"]
    result = runner.invoke(_app(), ["compare", "--erase", "red", *given, *out])
    assert result.exit_code == 0, result.output
    assert seen[-1].embedding_strengths == (1.0, 3.0)
    assert seen[-1].attacks == ["soft", "concept-vector"]
    result = runner.invoke(_app(), ["compare", "--erase", "red", "--embedding", "none", *out])
    assert result.exit_code == 0 and seen[-1].embedding_strengths == ()
    result = runner.invoke(_app(), ["compare", "--erase", "red", "--embedding", "2,4", *out])
    assert result.exit_code == 2 and "--embedding: must include 1.0" in result.output
    result = runner.invoke(_app(), ["compare", "--erase", "red", "--attack", "layer", *out])
    assert result.exit_code == 2 and "layer" in result.output
    assert seen[-1].attack_sld == ["medium"]  # the project's default preset
    result = runner.invoke(_app(), ["compare", "--erase", "red", "--attack-sld", "weak,max", *out])
    assert result.exit_code == 0 and seen[-1].attack_sld == ["weak", "max"]
    result = runner.invoke(_app(), ["compare", "--erase", "red", "--attack-sld", "none", *out])
    assert result.exit_code == 0 and seen[-1].attack_sld == []
    result = runner.invoke(_app(), ["compare", "--erase", "red", "--attack-sld", "huge", *out])
    assert result.exit_code == 2 and "unknown SLD preset" in result.output
