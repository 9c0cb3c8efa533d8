"""``safety-lora erase`` writes adapters every loader reads; bad options are clear errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from safety_lora.adapters import load_adapter, read_adapter
from safety_lora.cli import app
from safety_lora.models import concept_world
from safety_lora.workbench.training import read_adapter_info

runner = CliRunner()
RED = ["--erase", "red", "--anchor", "red=", "--template", "a {} circle", "--push", "1"]


def test_exact_erasure_is_a_lycoris_full_file(tmp_path: Path) -> None:
    out = tmp_path / "red.safetensors"
    result = runner.invoke(app, ["erase", *RED, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "lycoris / full" in result.output and "exact" in result.output
    state, fmt = read_adapter(out)
    assert (fmt, state.family) == ("lycoris", "full")
    info = read_adapter_info(out)
    assert info["method"] == "closed-form" and info["concepts"] == ["red"]
    assert info["closed_form"]["push"] == 1.0 and info["anchors"] == {"red": ""}
    assert len(info["solve_key"]) == 64 and info["base"] == "embedded:concept_world"
    shown = runner.invoke(app, ["inspect", str(out), "--json"])
    assert json.loads(shown.output)["family"] == "full"


def test_low_rank_erasure_in_every_format_loads_on_the_model(tmp_path: Path) -> None:
    for fmt in ("peft", "kohya", "lycoris"):
        out = tmp_path / f"red_{fmt}.safetensors"
        result = runner.invoke(
            app, ["erase", *RED, "--rank", "4", "--format", fmt, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert "relative" in result.output  # the SVD error is reported
        info = load_adapter(concept_world().unet, out, adapter_name="red")
        assert info.family == "lora" and set(info.ranks.values()) == {4}


def test_bad_options_are_clear_errors(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    kohya = runner.invoke(app, ["erase", *RED, "--format", "kohya", "--out", str(out)])
    assert kohya.exit_code == 1
    assert "full-rank" in kohya.output and "--rank" in kohya.output and not out.exists()
    anchor = runner.invoke(app, ["erase", "--erase", "red", "--anchor", "blue=", "--out", str(out)])
    assert anchor.exit_code == 2 and "CONCEPT=ANCHOR" in anchor.output
    push = runner.invoke(app, ["erase", "--erase", "red", "--push", "-1", "--out", str(out)])
    assert push.exit_code == 2 and "push" in push.output
    suffix = runner.invoke(app, ["erase", "--erase", "red", "--out", str(tmp_path / "x.pt")])
    assert suffix.exit_code == 1 and ".safetensors" in suffix.output


def test_inspect_shows_the_base_model_the_project_recorded(tmp_path: Path) -> None:
    out = tmp_path / "red.safetensors"
    assert runner.invoke(app, ["erase", *RED, "--out", str(out)]).exit_code == 0
    shown = json.loads(runner.invoke(app, ["inspect", str(out), "--json"]).output)
    assert shown["base_model"]["safety_lora.base"] == "embedded:concept_world"
    assert len(shown["base_model"]["safety_lora.base_fingerprint"]) == 64
