"""``safety-lora generate``: images, decisions.json and audit lines, on a local model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from PIL import Image
from typer.testing import CliRunner

from safety_lora.cli.generate import register
from safety_lora.testing import tiny_lora_file, tiny_pipeline

POLICY = """
version: 1
prompt: {classifiers: [{kind: static, scores: {sexual: 0.0}}]}
classifiers:
  - kind: static
    sequence: [{sexual: 0.9}, {sexual: 0.0}, {sexual: 0.0}]
categories:
  sexual: {threshold: 0.5, action: regenerate}
escalation: {max_attempts: 2, ladder: [1.0, 2.0], final_action: block}
"""


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands keep `generate` a named subcommand
    return app


def test_generate_writes_images_decisions_and_audit(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    pipe.save_pretrained(tmp_path / "model")
    lora = tiny_lora_file(pipe, tmp_path / "safe.safetensors")
    (tmp_path / "policy.yaml").write_text(POLICY)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _app(),
        [
            "generate", "a cat", "--policy", str(tmp_path / "policy.yaml"),
            "--model", str(tmp_path / "model"), "--adapter", str(lora), "--seed", "3",
            "-n", "2", "--steps", "2", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(out / "image_000.png") as image:
        assert image.size == (32, 32)
    records = json.loads((out / "decisions.json").read_text())
    # image 0: flagged then clean on attempt 2 at strength 2; image 1: clean at once.
    assert [(r["file"], r["action"], r["attempts"]) for r in records] == [
        ("image_000.png", "allow", 2),
        ("image_001.png", "allow", 1),
    ]
    assert records[0]["steering_scales"] == [{"safe": 1.0}, {"safe": 2.0}]
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in audit] == ["prompt", "image", "image"]
    assert audit[1]["adapters"]["safe"]


def test_generate_reports_a_bad_policy(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("version: 1\nbogus: 1\n")
    result = CliRunner().invoke(
        _app(),
        ["generate", "a cat", "--policy", str(tmp_path / "bad.yaml"), "--out", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "bogus: unknown key" in result.output


def test_generate_defaults_to_the_embedded_model(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(
        "version: 1\nclassifiers:\n  - kind: concept_world\n    unsafe: {sexual: [red]}\n"
        "categories:\n  sexual: {threshold: 0.5, action: block}\n"
        "escalation: {max_attempts: 1}\n"
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        _app(),
        ["generate", "a blue square", "--policy", str(tmp_path / "policy.yaml"), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    (record,) = json.loads((out / "decisions.json").read_text())
    assert record["action"] == "allow"  # the trained model draws blue, which the policy allows
    with Image.open(out / "image_000.png") as image:
        assert image.size == (32, 32)


def test_a_model_that_cannot_be_loaded_is_named_with_what_to_check(
    tmp_path: Path, monkeypatch: Any
) -> None:
    (tmp_path / "not-a-pipeline").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = {
        str(tmp_path / "missing"): "is not a folder that exists",
        str(tmp_path / "not-a-pipeline"): "no model_index.json",
        "someone/some-model": "hub downloads are off (HF_HUB_OFFLINE=1)",
    }
    for model, expected in cases.items():
        result = CliRunner().invoke(
            _app(), ["generate", "a cat", "--out", str(tmp_path / "out"), "--model", model]
        )
        assert result.exit_code == 2, result.output
        assert f"--model: cannot load the model {model!r}" in result.output
        assert expected in result.output
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_mistyped_preset_lists_the_presets(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _app(), ["generate", "a cat", "--out", str(tmp_path), "--policy", "balance"]
    )
    assert result.exit_code == 2
    assert "'balance' is neither a preset (strict, balanced, permissive)" in result.output
    assert "did you mean 'balanced'?" in result.output


def test_generate_edits_an_image_and_judges_it_first(tmp_path: Path) -> None:
    from safety_lora.demo import demo_policy

    policy = tmp_path / "demo.yaml"
    policy.write_text(demo_policy().model_dump_json())
    Image.new("RGB", (32, 32), (220, 30, 30)).save(tmp_path / "red.png")
    Image.new("RGB", (32, 32), (30, 30, 220)).save(tmp_path / "blue.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(tmp_path / "mask.png")
    common = ["--policy", str(policy), "--strength", "0.6"]

    refused = CliRunner().invoke(
        _app(), ["generate", "a circle", "--image", str(tmp_path / "red.png"), *common,
                 "--out", str(tmp_path / "a")],
    )  # fmt: skip
    assert refused.exit_code == 0, refused.output
    (record,) = json.loads((tmp_path / "a" / "decisions.json").read_text())
    assert (record["action"], record["rule"], record["input"]) == (
        "block",
        "inputs.action",
        "image",
    )
    audit = [json.loads(x) for x in (tmp_path / "a" / "audit.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["action"]) for r in audit] == [
        ("prompt", "allow"), ("input", "block"), ("image", "block"),
    ]  # fmt: skip

    edited = CliRunner().invoke(
        _app(), ["generate", "a blue circle", "--image", str(tmp_path / "blue.png"), "--mask",
                 str(tmp_path / "mask.png"), "-n", "2", *common, "--out", str(tmp_path / "b")],
    )  # fmt: skip
    assert edited.exit_code == 0, edited.output
    records = json.loads((tmp_path / "b" / "decisions.json").read_text())
    assert [r["attempts"] >= 1 for r in records] == [True, True]
    audit = [json.loads(x) for x in (tmp_path / "b" / "audit.jsonl").read_text().splitlines()]
    assert [r.get("input") for r in audit if r["kind"] == "input"] == ["image", "mask_image"]


def test_generate_input_errors_name_the_option(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    cases = {
        "--image": ["--image", str(tmp_path / "bad.png")],
        "--mask needs --image": ["--mask", str(tmp_path / "bad.png")],
    }
    for expected, args in cases.items():
        result = CliRunner().invoke(
            _app(), ["generate", "a circle", *args, "--out", str(tmp_path / "o")]
        )
        assert result.exit_code == 2, result.output
        assert expected in result.output
    assert not (tmp_path / "o" / "decisions.json").exists()
