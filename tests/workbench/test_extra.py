"""The workbench's commands check their extra before loading anything, with the exact hint."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from typer.testing import CliRunner

from safety_lora.cli import app


@pytest.mark.parametrize(
    "argv",
    [
        ["compare", "--erase", "red", "--out", "cmp"],
        ["train", "--erase", "red", "--out", "red.safetensors"],
        ["attack", "--erase", "red", "--out", "atk"],
        ["erase", "--erase", "red", "--out", "red.safetensors", "--attack-rounds", "1"],
    ],
)
def test_a_workbench_command_without_its_extra_names_the_install(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    found = importlib.util.find_spec

    def without_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "matplotlib" else found(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "pip install 'safety-lora[workbench]'" in result.output
    assert "matplotlib is not installed" in result.output
    assert not list(tmp_path.iterdir())  # nothing was started or written
