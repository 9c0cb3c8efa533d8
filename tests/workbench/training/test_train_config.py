"""TrainConfig / Erasure: prompt pairs for plain, anchored and replaced forms; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from safety_lora.workbench.training import Erasure, TrainConfig

OUT = Path("adapter.safetensors")


@pytest.mark.parametrize(
    ("anchor", "expected"),
    [
        (None, [("a red square", ""), ("red", "")]),  # plain ESD: the empty prompt
        ("", [("a red square", "a square"), ("red", "")]),  # the concept removed
        ("blue", [("a red square", "a blue square"), ("red", "blue")]),  # replaced
    ],
)
def test_prompt_pairs(anchor: str | None, expected: list[tuple[str, str]]) -> None:
    erasure = Erasure(concept="red", anchor=anchor, templates=["a {} square", "{}"])
    assert erasure.prompt_pairs() == expected


def test_explicit_pairs_follow_template_pairs() -> None:
    erasure = Erasure(concept="red", templates=[], pairs=[("a red cat", "a cat")])
    assert erasure.prompt_pairs() == [("a red cat", "a cat")]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"out": Path("a.pt")}, "must end with .safetensors"),
        ({"erase": [Erasure(concept="red"), Erasure(concept="red")]}, "names a concept twice"),
        ({"adapter": "lokr", "rank": 4, "alpha": 2.0}, "LoKr needs `alpha` == `rank`"),
        ({"patience": 2, "eval_every": None}, "needs validation"),
        ({"target_modules": []}, "must not be empty"),
        ({"method": "esd-z"}, "esd-x"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, object], message: str) -> None:
    base: dict[str, object] = {"erase": [Erasure(concept="red")], "out": OUT}
    with pytest.raises(ValidationError, match=message):
        TrainConfig(**{**base, **fields})


def test_template_needs_one_slot() -> None:
    with pytest.raises(ValidationError, match=r"exactly one '\{\}', got 'a square'"):
        Erasure(concept="red", templates=["a square"])


def test_checkpoint_path_and_alpha_defaults() -> None:
    config = TrainConfig(erase=[Erasure(concept="red")], out=Path("x/red.safetensors"), rank=8)
    assert config.checkpoint_path == Path("x/red.ckpt.safetensors")
    assert config.lora_alpha == 8.0
