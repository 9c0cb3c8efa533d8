"""Options generated from a config model, under a ``--config`` file: precedence and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from safety_lora.adapters import read_adapter
from safety_lora.cli import app as safety_lora_app
from safety_lora.config_cli import CliField, ConfigArgs, add_config_command
from safety_lora.workbench.training import read_adapter_info


class Settings(BaseModel):
    """A model with one field of each kind the helper turns into an option."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What to call it.")
    size: Annotated[int, Field(ge=1, le=10, description="How many.")] = 3
    kind: Literal["a", "b"] = "a"
    tags: list[str] = Field(default_factory=list)
    ranks: list[int] = Field(default_factory=lambda: [4])
    scale: float | None = 2.0
    loud: bool = False


def _scale(text: str) -> float | None:
    return float(text) or None  # 0: None (a value given, as --eval-every 0 is)


def show(
    config: ConfigArgs[Settings],
    shout: Annotated[bool, typer.Option("--shout", help="Loud, whatever the rest says.")] = False,
) -> None:
    """Print the validated settings as JSON."""
    settings = config.validate(overrides={"loud": True} if shout else None)
    typer.echo(settings.model_dump_json())


def _app() -> typer.Typer:
    """``show`` imports its model on use, ``show-now`` has it already; ``later``'s is missing."""
    app = typer.Typer()
    fields = {
        "tags": CliField("--tag"),
        "ranks": CliField(sep=","),
        "scale": CliField(parse=_scale),
    }
    add_config_command(app, "show", show, model=f"{__name__}:Settings", fields=fields)
    add_config_command(app, "show-now", show, model=Settings, fields=fields)
    add_config_command(app, "later", show, model="no_such_module:Settings")
    return app


COMMANDS = pytest.mark.parametrize("command", ["show", "show-now"])


def _invoke(
    tmp_path: Path, file: str | None, suffix: str, args: list[str], command: str = "show"
) -> tuple[int, str]:
    if file is not None:
        path = tmp_path / f"cfg{suffix}"
        path.write_text(file)
        args = ["--config", str(path), *args]
    result = CliRunner().invoke(_app(), [command, *args], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.replace("│", " ").split())


VALID = [
    # (file, suffix, args, fields expected)
    ("name: x\nsize: 5\n", ".yaml", ["--size", "7"], {"name": "x", "size": 7}),
    ("name: x\nsize: 5\n", ".yaml", [], {"name": "x", "size": 5}),
    ("name: x\n", ".yaml", [], {"size": 3, "kind": "a", "tags": [], "scale": 2.0}),
    ('{"name": "x", "loud": true}', ".json", ["--no-loud"], {"loud": False}),
    ('{"name": "x"}', ".json", ["--shout"], {"loud": True}),
    ("name: x\ntags: [p]\n", ".yaml", ["--tag", "a", "--tag", "b"], {"tags": ["a", "b"]}),
    (None, "", ["--name", "y", "--ranks", "1,2", "--kind", "b"], {"ranks": [1, 2], "kind": "b"}),
    ("name: x\nscale: 3.5\n", ".yaml", ["--scale", "0"], {"scale": None}),
    ("", ".yaml", ["--name", "z"], {"name": "z"}),  # an empty file: no settings
]


@COMMANDS
@pytest.mark.parametrize(("file", "suffix", "args", "expected"), VALID)
def test_options_given_win_over_the_file(
    tmp_path: Path,
    command: str,
    file: str | None,
    suffix: str,
    args: list[str],
    expected: dict[str, Any],
) -> None:
    code, output = _invoke(tmp_path, file, suffix, args, command)
    assert code == 0, output
    shown = json.loads(output)
    assert {k: shown[k] for k in expected} == expected


INVALID = [
    # (file, args, what the error says: {file} is the config file's path)
    ("name: x\nsize: 50\n", [], "{file}: size: Input should be less than or equal to 10 (got 50)"),
    ("name: x\nsize: many\n", [], "{file}: size: Input should be a valid integer"),
    ("name: x\ncolour: red\n", [], "{file}: colour: Extra inputs are not permitted (got 'red')"),
    (
        "name: x\nsize: 50\n",
        ["--size", "0"],
        "'--size': Input should be greater than or equal to 1",
    ),
    (None, ["--name", "x", "--kind", "c"], "'--kind': must be one of ['a', 'b'], got 'c'"),
    (None, ["--name", "x", "--ranks", "1,two"], "--ranks (ranks.1): Input should be a valid"),
    (None, [], "--name: Field required"),
    ("- a\n- b\n", [], "{file}: expected a mapping of settings, got list"),
    ("name: x\nname: y\n", [], "{file}: not valid YAML: duplicate key 'name'"),
]


@COMMANDS
@pytest.mark.parametrize(("file", "args", "message"), INVALID)
def test_errors_name_the_option_or_the_file(
    tmp_path: Path, command: str, file: str | None, args: list[str], message: str
) -> None:
    code, output = _invoke(tmp_path, file, ".yaml", args, command)
    assert code == 2, output
    assert message.format(file=tmp_path / "cfg.yaml") in output


def test_every_error_gets_its_line(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("size: 50\ncolour: red\n")
    args = ["show", "--config", str(tmp_path / "cfg.yaml")]
    result = CliRunner().invoke(_app(), args, env={"COLUMNS": "200"})
    assert result.exit_code == 2
    lines = [line.strip("│ ") for line in result.output.splitlines() if line.startswith("│")]
    assert lines == [
        "--name: Field required",
        f"{tmp_path / 'cfg.yaml'}: size: Input should be less than or equal to 10 (got 50)",
        f"{tmp_path / 'cfg.yaml'}: colour: Extra inputs are not permitted (got 'red')",
    ]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    code, output = _invoke(tmp_path, None, "", ["--config", str(tmp_path / "none.yaml")])
    assert code == 2 and f"{tmp_path / 'none.yaml'}: cannot read" in output


def test_help_comes_from_the_model_and_the_model_loads_on_use() -> None:
    runner = CliRunner()
    listing = runner.invoke(_app(), ["--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "later" in listing.output  # no_such_module not imported
    text = runner.invoke(_app(), ["show", "--help"], env={"COLUMNS": "200"}).output
    shown = [
        "--config", "FILE", "What to call it. Required (here or in the --config",
        "INTEGER [1<=x<=10]", "How many. [default: 3]", "[a|b]", "--tag", "Repeatable.",
        "INTEGER,...", "[default: 4]", "--no-loud", "[default: no-loud]", "--shout",
    ]  # fmt: skip
    for part in shown:
        assert part in text, (part, text)
    with pytest.raises(ModuleNotFoundError):
        runner.invoke(_app(), ["later", "--help"], catch_exceptions=False)


def test_erase_reads_a_config_file_under_its_options(tmp_path: Path) -> None:
    config = tmp_path / "red.yaml"
    config.write_text("erase: [red]\ntemplates: ['a {} circle']\npush: 1.0\nrank: 8\n")
    out = tmp_path / "red.safetensors"
    args = ["erase", "--config", str(config), "--anchor", "red=", "--rank", "4", "--out", str(out)]
    result = CliRunner().invoke(safety_lora_app, args)
    assert result.exit_code == 0, result.output
    state, _ = read_adapter(out)
    info = read_adapter_info(out)
    assert state.family == "lora" and info["closed_form"]["rank"] == 4  # the option won
    assert info["closed_form"]["push"] == 1.0 and info["anchors"] == {"red": ""}
