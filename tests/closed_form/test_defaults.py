"""The closed-form defaults are the measured ones, the same from the CLI and the Python API,
and a new user's ``erase --erase red --anchor red=`` takes red out of the embedded model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from safety_lora.adapters import load_adapter
from safety_lora.cli import app
from safety_lora.closed_form import ClosedFormConfig, erase
from safety_lora.models import concept_world
from safety_lora.workbench.concept_world.evaluate import Generation, evaluate
from safety_lora.workbench.training import read_adapter_info

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs/steering/closed-form.md"
RESULTS = REPO / "benchmarks/results/closed_form.json"
SHIPPED = "the closed-form defaults beside the demo policy and the presets"
NEW_USER = ["erase", "--erase", "red", "--anchor", "red="]


def _documented(field: str) -> str:
    """The default the closed-form page's field table gives ``field``."""
    (value,) = re.findall(rf"^\| `{field}` \| ([^|]+) \|", DOCS.read_text("utf-8"), re.M)
    return value.strip()


def test_the_config_defaults_are_the_documented_ones() -> None:
    config = ClosedFormConfig(erase=["red"])
    assert (config.push, config.lam) == (1.0, 2.0)
    assert (_documented("push"), _documented("lam")) == ("1.0", "2.0")


def test_the_benchmark_page_measured_the_current_defaults() -> None:
    tables = json.loads(RESULTS.read_text("utf-8"))["tables"]
    (shipped,) = [t for t in tables if t["title"].startswith(SHIPPED)]
    default = shipped["rows"][0]
    config = ClosedFormConfig(erase=["red"])
    assert default[1:3] == [str(config.push), str(config.lam)]
    (grid,) = [t for t in tables if t["title"].startswith("a new user's")]
    assert any(": the defaults (push" in note for note in grid["notes"]), grid["notes"]


def test_the_cli_default_solves_what_the_python_default_solves(tmp_path: Path) -> None:
    cli = tmp_path / "cli.safetensors"
    result = CliRunner().invoke(app, [*NEW_USER, "--out", str(cli)])
    assert result.exit_code == 0, result.output
    config = ClosedFormConfig(erase=["red"], anchors={"red": ""})
    api = erase(config, out=tmp_path / "api.safetensors")
    info = read_adapter_info(cli)
    assert info["solve_key"] == api.key
    assert info["closed_form"] == config.model_dump(mode="json")


def _red_and_shape(results: list[Generation]) -> tuple[float, float]:
    """Share of the images showing red, and of those drawing the asked shape."""
    red = sum(any(o.colour == "red" for o in r.analysis.objects) for r in results)
    return red / len(results), sum(bool(r.shape_correct) for r in results) / len(results)


@pytest.mark.slow
def test_a_default_erase_takes_red_out_and_keeps_the_shapes(tmp_path: Path) -> None:
    out = tmp_path / "red.safetensors"
    assert CliRunner().invoke(app, [*NEW_USER, "--out", str(out)]).exit_code == 0
    pipe = concept_world()
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = ("a red circle", "a red square", "a red triangle"), list(range(4))
    base_red, base_shape = _red_and_shape(evaluate(pipe, prompts, seeds=seeds))
    load_adapter(pipe.unet, out, adapter_name="erase")
    pipe.unet.set_adapters(["erase"], [1.0])
    red, shape = _red_and_shape(evaluate(pipe, prompts, seeds=seeds))
    assert base_red >= 0.9 and red <= 0.25, (base_red, red)
    assert shape >= base_shape - 1 / 12, (base_shape, shape)
