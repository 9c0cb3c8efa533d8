"""Every command's --help renders as a user reads it: plain metavars, defaults shown, no noise."""

from __future__ import annotations

import re
from typing import Any

import pytest
from click.testing import CliRunner

from safety_lora.cli import command


def _paths(cmd: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        out.extend(_paths(sub, (*prefix, name)))
    return out


COMMANDS = _paths(command())


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "safety-lora")
def test_help_renders_plainly(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(command(), [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert "Usage: safety-lora" in text and "Show this message and exit." in text
    for bad in ("<bool>", "<str>", "<path>", "<int", "<float>", "<list", "Traceback",
                "torchvision"):  # fmt: skip
        assert bad not in text, (bad, text)
    assert not re.search(r"\{[a-z_]+\}", text), text  # no {prompt}-style arguments
    assert not re.search(r"\w \.\s", text), text  # no help text whose "[default: x]" was eaten


def test_defaults_and_metavars_are_shown() -> None:
    def run(*args: str) -> str:
        return CliRunner().invoke(command(), [*args, "--help"], env={"COLUMNS": "200"}).output

    generate = run("generate")
    assert "Usage: safety-lora generate [OPTIONS] PROMPT" in generate
    assert "Denoising steps (default: model's)." in generate
    assert re.search(r"--steps\s+INTEGER", generate)
    assert re.search(r"--seed\s+INTEGER\s+Generator seed. \[default: 0\]", generate)
    moderate = run("moderate")
    assert "[PATHS]..." in moderate and re.search(r"--json\s+Print", moderate)  # a flag: no value
    train = run("train")
    assert "(default: the bundled concept-world model)" in train
    assert "(default: rank)" in train
