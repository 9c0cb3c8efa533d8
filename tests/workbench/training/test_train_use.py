"""A trained adapter in use: steering from a policy, and the ``safety-lora train`` command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from safety_lora.policies.schema import SteeringPolicy
from safety_lora.steering import Steering
from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.cli import train as train_cli
from safety_lora.workbench.training import TrainConfig, read_adapter_info, train_adapter

Factory = Callable[..., TrainConfig]


def _images(pipe: Any, **kwargs: Any) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    out = pipe("a red car", num_inference_steps=3, generator=gen, output_type="np", **kwargs)
    return np.asarray(out.images)


def test_trained_lora_steers_from_a_policy(config_factory: Factory) -> None:
    pipe = tiny_pipeline()
    result = train_adapter(config_factory(steps=3, lr=5e-2), pipe=pipe)
    base = _images(pipe)
    policy = SteeringPolicy.model_validate(
        {"adapters": [{"path": result.path, "name": "erase_red", "categories": ["sexual"]}]}
    )
    steering = Steering(pipe, policy)
    try:
        for scale, same in ((0.0, True), (1.0, False)):
            with steering.apply({"erase_red": scale}, {}) as kwargs:
                assert np.array_equal(_images(pipe, **kwargs), base) is same
    finally:
        steering.close()


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    train_cli.register(app)

    @app.command("noop")  # a second command, so typer keeps "train" as a subcommand
    def noop() -> None: ...

    return app


def test_cli_trains_from_a_pipeline_folder(cli: typer.Typer, tmp_path: Path) -> None:
    tiny_pipeline().save_pretrained(tmp_path / "base")
    out = tmp_path / "red.safetensors"
    args = [
        "train", "--base", str(tmp_path / "base"), "--erase", "red", "--anchor", "red=",
        "--template", "a {} car", "--template", "a {} tree", "--preserve", "a blue car",
        "--method", "esd-x", "--adapter", "lokr", "--rank", "2", "--steps", "2",
        "--ddim-steps", "3", "--batch", "1", "--out", str(out), "--seed", "3", "--eval-every", "0",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: 2 steps" in result.output
    info = read_adapter_info(out)
    assert info["adapter"] == "lokr" and info["anchors"] == {"red": ""}
    assert info["training_args"]["seed"] == 3 and info["base"] == str(tmp_path / "base")
    assert info["training_args"]["eval_every"] is None and info["val_loss"] is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--anchor", "blue=x"], "CONCEPT=ANCHOR with CONCEPT one of ['red']"),
        (["--adapter", "dora"], "must be one of ['lora', 'loha', 'lokr'], got 'dora'"),
        (["--rank", "0"], "greater than or equal to 1"),
    ],
)
def test_cli_rejects_bad_options(
    cli: typer.Typer, tmp_path: Path, extra: list[str], message: str
) -> None:
    args = ["train", "--erase", "red", "--out", str(tmp_path / "x.safetensors"), *extra]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.replace("│", " ").split())
