"""A small compare run on a tiny pipeline writes every file with values that add up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from safety_lora.compare import CompareConfig, run
from safety_lora.compare.methods import Sampler
from safety_lora.compare.metrics import ConceptWorldJudge
from safety_lora.testing import tiny_pipeline

RATES = ("concept_rate", "erasure", "kept", "other", "preservation", "block_rate")


def _config(out: Path, **overrides: Any) -> CompareConfig:
    fields: dict[str, Any] = {
        "erase": "red",
        "families": ["lora", "lokr"],
        "seeds": 1,
        "steps": 25,
        "chunk": 25,
        "prompts_per_concept": 2,
        "num_inference_steps": 3,
        "sld_presets": ["strong"],
        "regularity": False,
        "grid_images": 2,
        "attack_budget": 2,
        "attack_images": 2,
        "out": out,
        "progress": False,
        **overrides,
    }
    return CompareConfig(**fields)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompareConfig, Any, dict[str, Any]]:
    pipe = tiny_pipeline()
    config = _config(tmp_path_factory.mktemp("compare"))
    return config, pipe, run(config, pipe=pipe)


def _row(data: dict[str, Any], method: str, strength: float) -> dict[str, Any]:
    return next(r for r in data["rows"] if r["method"] == method and r["strength"] == strength)


def test_writes_every_file(compared: tuple[CompareConfig, Any, dict[str, Any]]) -> None:
    config, _, data = compared
    out = config.out
    assert json.loads((out / "report.json").read_text())["reading"] == data["reading"]
    markdown = (out / "report.md").read_text()
    assert "| lora r4 | 1 |" in markdown and "## Inference cost per denoising step" in markdown
    pngs = [out / data["files"][k] for k in ("scatter", "curves", "costs")]
    pngs += [out / g for g in data["files"]["grids"].values()]
    assert len(data["files"]["grids"]) == 6  # base, negative prompt, SLD, classifier, 2 adapters
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [
        "lokr-r4-b4-s0-reg.safetensors",
        "lora-r4-b4-s0-reg.safetensors",
    ]


def test_values_are_sane(compared: tuple[CompareConfig, Any, dict[str, Any]]) -> None:
    _, _, data = compared
    methods = {r["method"] for r in data["rows"]}
    assert methods == {"base", "negative prompt", "SLD strong", "classifier only", "lora r4",
                       "lokr r4"}  # fmt: skip
    for row in data["rows"]:
        for key in RATES:
            assert 0.0 <= row[key] <= 1.0, (row["method"], key, row[key])
        assert row["erasure"] == pytest.approx(1.0 - row["concept_rate"])
    for t in data["training"]:
        assert t["trainable_parameters"] > 0 and t["file_bytes"] > 0
        assert t["seconds_per_step"][0] > 0 and t["steps"][0] == 25
    budgets = data["budgets"]["4"]
    assert budgets["lora"] == [4, 4096] and budgets["lokr"][1] <= 4096
    sld = next(c for c in data["costs"] if c["method"] == "SLD strong")
    assert sld["extra_unet_calls_per_step"] == 1.0
    assert {c["method"] for c in data["costs"] if c["fused"]} == {"lora r4", "lokr r4"}


def test_attack_success_column(compared: tuple[CompareConfig, Any, dict[str, Any]]) -> None:
    config, _, data = compared
    attacked = [a["method"] for a in data["attacks"]]
    trained = [t["method"] for t in data["training_runs"]]
    assert attacked == [*dict.fromkeys(trained), "SLD strong"]
    for row in data["attacks"]:
        assert row["budget"] == 2 and row["seconds_per_attempt"] > 0
        assert all(0.0 <= row[k] <= 1.0 for k in ("clean", "soft_asr", "token_asr"))
    report = (config.out / "report.md").read_text()
    assert "## Attack success (white-box, 2 steps per attempt" in report
    assert (config.out / "attacks" / "sld-strong" / "report.json").is_file()


def test_base_rate_is_the_separately_computed_rate(
    compared: tuple[CompareConfig, Any, dict[str, Any]],
) -> None:
    _, pipe, data = compared
    prompts = data["prompts"]["target"]
    sampler = Sampler(pipe, num_inference_steps=3, guidance_scale=4.0)
    images = sampler.sample(prompts, list(range(len(prompts))))  # seed index 0: seeds 0, 1, ...
    expected = sum(ConceptWorldJudge("red").shows(images)) / len(images)
    assert _row(data, "base", 0.0)["concept_rate"] == expected


def test_strength_zero_rows_equal_the_base_row(
    compared: tuple[CompareConfig, Any, dict[str, Any]],
) -> None:
    _, _, data = compared
    base = _row(data, "base", 0.0)
    for method in ("lora r4", "lokr r4"):
        zero = _row(data, method, 0.0)
        assert {k: zero[k] for k in RATES} == {k: base[k] for k in RATES}


def test_resume_reuses_units(
    compared: tuple[CompareConfig, Any, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, pipe, data = compared
    with pytest.raises(FileExistsError, match="--resume"):
        run(config, pipe=pipe)
    with pytest.raises(ValueError, match="other settings"):
        run(_config(config.out, steps=50, resume=True), pipe=pipe)

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("resumed run trained again")

    monkeypatch.setattr("safety_lora.training.train_adapter", no_training)
    again = run(config.model_copy(update={"resume": True}), pipe=pipe)
    assert again["rows"] == data["rows"]
