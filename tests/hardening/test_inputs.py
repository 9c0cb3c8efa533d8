"""Bad input gets a clear error (file, line, value) or the policy's verdict, never a bypass."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from safety_lora.audit import read_audit_log
from safety_lora.cli import app
from safety_lora.guard import SafetyGuard
from safety_lora.policies import Policy, PolicyError
from safety_lora.policies.engine import HARD_RULE
from safety_lora.taxonomy import PromptAction
from safety_lora.testing import tiny_lora_file, tiny_pipeline

runner = CliRunner()


def flat(output: str) -> str:
    """CLI output on one line: rich's wrapping and error-box borders removed."""
    return re.sub(r"[\s│╭╮╰╯─]+", " ", output)


STATIC = "classifiers: [{kind: static, scores: {sexual: 0.0}}]\n"

# -- prompts: every control or format character goes --------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["a nu\x00de child", "a nu\u200bde child", "a nu\x7fde child", "a nu\x1bde child",
     "a nu\x0bde child", "a nu\u0085de child", "a nu\u00adde child"],
)  # fmt: skip
def test_control_characters_cannot_split_a_word_past_the_hard_rule(prompt: str) -> None:
    decision = SafetyGuard("balanced").check_prompt(prompt)
    assert (decision.action, decision.rule) == (PromptAction.REFUSE, HARD_RULE)


# -- policy files -------------------------------------------------------------------------------


def write(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("categories: {sexual: {threshold: true}}\n", "categories.sexual.threshold: Input "
         "should be a valid number (got True)"),
        ("escalation: {max_attempts: 2.5}\n", "escalation.max_attempts: Input should be a "
         "valid integer (got 2.5)"),
        ("audit: {include_prompt: 1}\n", "audit.include_prompt: Input should be a valid "
         "boolean (got 1)"),
        ("steering:\n  adapters:\n    - {closed_form: {erase: [a], push: false},"
         " categories: [sexual]}\n", "closed_form.push: Input should be a valid number"),
    ],
)  # fmt: skip
def test_numbers_and_booleans_are_strict(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        Policy.from_file(write(tmp_path, STATIC + text))
    assert expected in str(info.value)


def test_duplicate_keys_name_both_lines(tmp_path: Path) -> None:
    text = STATIC + "name: first\ndescription: x\nname: second\n"
    with pytest.raises(PolicyError, match=r"duplicate key 'name' \(first at line 2, again at "
                       r"line 4\)"):  # fmt: skip
        Policy.from_file(write(tmp_path, text))
    nested = STATIC + "categories:\n  sexual: {threshold: 0.5}\n  sexual: {threshold: 0.9}\n"
    with pytest.raises(PolicyError, match="duplicate key 'sexual'"):
        Policy.from_file(write(tmp_path, nested))
    json_text = '{"classifiers": [{"kind": "static", "scores": {"sexual": 0}}], "name": "a", ' \
        '"name": "b"}'  # fmt: skip
    with pytest.raises(PolicyError, match=r"p\.json: not valid JSON: duplicate key 'name'"):
        Policy.from_file(write(tmp_path, json_text, "p.json"))


def test_relative_paths_resolve_against_the_policy_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "rules.yaml").write_text(
        "version: 1\ncategories:\n  violence:\n    - {weight: 1.0, terms: [zorblax]}\n"
    )
    path = write(
        folder,
        "prompt:\n  classifiers: [{kind: prompt_rules, rules: rules.yaml}]\n"
        "  rules: {violence: {refuse_at: 0.8}}\n"
        "classifiers: [{kind: nudenet, model_path: detector.onnx}]\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory must not matter
    policy = Policy.from_file(path)
    rules, detector = policy.prompt.classifiers[0], policy.classifiers[0]
    assert rules.rules == str(folder / "rules.yaml")  # type: ignore[union-attr]
    assert detector.model_path == str(folder / "detector.onnx")  # type: ignore[union-attr]
    judged = Policy.from_file(write(folder, STATIC, "s.yaml")).classifiers  # no detector file
    guard = SafetyGuard(policy.model_copy(update={"classifiers": judged}))
    assert guard.check_prompt("a zorblax").refused  # the policy folder's rules file was read


def test_a_latin1_policy_names_the_file_the_line_and_the_encoding(tmp_path: Path) -> None:
    path = write(tmp_path, (STATIC + "name: café\n").encode("latin-1"))
    with pytest.raises(PolicyError, match=r"p.yaml: line 2: not UTF-8 text \(byte 0xe9"):
        Policy.from_file(path)


def test_validate_goes_on_and_checks_every_file_the_policy_names(tmp_path: Path) -> None:
    latin = write(tmp_path, (STATIC + "name: café\n").encode("latin-1"), "latin.yaml")
    adapter = tiny_lora_file(tiny_pipeline(), tmp_path / "a.safetensors")
    pinned = write(
        tmp_path,
        "steering:\n  adapters:\n"
        f"    - {{path: a.safetensors, categories: [sexual], sha256: '{'0' * 64}'}}\n"
        "    - {path: missing.safetensors, categories: [sexual]}\n"
        "classifiers:\n  - {kind: hf_image, model: ./no-such-model, labels: {nsfw: sexual}}\n",
        "pinned.yaml",
    )
    good = write(tmp_path, STATIC, "good.yaml")
    result = runner.invoke(app, ["policy", "validate", str(latin), str(pinned), str(good)])
    assert result.exit_code == 1
    output = flat(result.output)
    assert "latin.yaml: line 2: not UTF-8 text" in output
    assert f"steering.adapters.0.path: steering adapter '{adapter}': sha256 is" in output
    assert "the pin is 0000" in output
    assert "steering.adapters.1.path: steering adapter" in output and "file not found" in output
    assert "classifiers.0.model:" in output and "no-such-model' does not exist" in output
    assert "good.yaml: policy 'custom' is valid" in output


# -- the moderate command --------------------------------------------------------------------------


def red_disc() -> Image.Image:
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((8, 8, 24, 24), fill=(215, 35, 35))
    return image


def concept_policy(tmp_path: Path, action: str) -> Path:
    return write(
        tmp_path,
        "classifiers: [{kind: concept_world, unsafe: {sexual: [red]}}]\n"
        f"categories: {{sexual: {{threshold: 0.5, action: {action}}}}}\n"
        "escalation: {final_action: blur}\naudit: {path: audit.jsonl}\n",
        "moderate.yaml",
    )


def test_moderate_applies_the_final_action_and_audits_prompts(tmp_path: Path) -> None:
    image = tmp_path / "red.png"
    red_disc().save(image)
    policy = concept_policy(tmp_path, "regenerate")
    result = runner.invoke(
        app, ["moderate", str(image), "--prompt", "a cat", "--policy", str(policy), "--json"]
    )
    assert result.exit_code == 1  # not allowed: blurred
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["kind"], r["action"]) for r in rows] == [("prompt", "allow"), ("image", "blur")]
    assert rows[1]["rule"] == "escalation.final_action"
    kinds = [r.get("kind", "image") for r in read_audit_log(tmp_path / "audit.jsonl")]
    assert kinds == ["prompt", "image"]


def test_moderate_opens_files_by_content_and_reports_what_it_cannot_read(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    red_disc().save(folder / "photo.jfif", format="JPEG")
    red_disc().save(folder / "photo.avif", format="AVIF")
    red_disc().save(folder / "no-extension", format="PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / "cut.png").write_bytes(_png_bytes()[:60])
    policy = concept_policy(tmp_path, "block")
    result = runner.invoke(app, ["moderate", str(folder), "--policy", str(policy), "--json"])
    assert result.exit_code == 1
    rows = {Path(r["item"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    # notes.txt is plainly not an image (not by name, not by content): skipped and counted
    assert set(rows) == {"photo.jfif", "photo.avif", "no-extension", "cut.png"}
    assert "skipped 1 file that is not an image: notes.txt" in result.stderr
    for name in ("photo.jfif", "photo.avif", "no-extension"):
        assert rows[name]["action"] == "block", name  # judged, red found
    # cut.png claims to be an image and is not: refused
    assert rows["cut.png"]["action"] == "error" and rows["cut.png"]["rule"] == "unreadable image"


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    red_disc().save(buffer, format="PNG")
    return buffer.getvalue()


def test_prompt_csvs_in_other_encodings_or_with_huge_fields_are_clear_errors(
    tmp_path: Path,
) -> None:
    policy = write(tmp_path, STATIC, "s.yaml")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt\nun café\n".encode("latin-1"))
    huge = tmp_path / "huge.csv"
    huge.write_text("prompt\nok\n" + "x" * (200 * 1024) + "\n", encoding="utf-8")
    for path, expected in ((latin, "line 2: not UTF-8 text"), (huge, "line 3: field larger")):
        result = runner.invoke(app, ["moderate", "--prompts", str(path), "--policy", str(policy)])
        assert result.exit_code == 2
        assert expected in flat(result.output), result.output
        assert "Traceback" not in result.output


# -- adapter files on the command line -------------------------------------------------------------


def bad_adapters(tmp_path: Path) -> dict[str, Path]:
    """Adapter files a user might pass by mistake, each with the error it must give."""
    good = tiny_lora_file(tiny_pipeline(), tmp_path / "tiny.safetensors")  # another model's
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:100])
    nan = tmp_path / "nan.safetensors"
    name = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file(
        {f"{name}.lora_A.weight": torch.full((4, 64), float("nan")),
         f"{name}.lora_B.weight": torch.zeros(64, 4)},
        str(nan),
    )  # fmt: skip
    pickled = tmp_path / "pickled.safetensors"
    buffer = io.BytesIO()
    torch.save({"x": torch.zeros(1)}, buffer)
    pickled.write_bytes(buffer.getvalue())
    return {"wrong shape": good, "truncated": cut, "NaN": nan, "pickle": pickled}


def test_generate_with_a_bad_adapter_prints_the_reason_and_exits_1(tmp_path: Path) -> None:
    expected = {
        "wrong shape": "the UNet's weight has shape",
        "truncated": "not a readable safetensors file",
        "NaN": "contains NaN or inf values",
        "pickle": "not a readable safetensors file",
    }
    for kind, path in bad_adapters(tmp_path).items():
        result = runner.invoke(
            app,
            ["generate", "a red circle", "--adapter", str(path), "--out", str(tmp_path / kind)],
        )
        assert result.exit_code == 1, (kind, result.output)
        assert expected[kind] in flat(result.output), (kind, result.output)
        assert "Traceback" not in result.output
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        )


def test_inspect_with_a_base_checks_every_shape(tmp_path: Path) -> None:
    from safety_lora.models import CONCEPT_WORLD_DIR

    lora = tiny_lora_file(tiny_pipeline(), tmp_path / "tiny.safetensors")
    bad = runner.invoke(app, ["inspect", str(lora), "--base", str(CONCEPT_WORLD_DIR)])
    assert bad.exit_code == 1
    assert "does not fit --base" in bad.output and "has shape" in flat(bad.output)
    shipped = CONCEPT_WORLD_DIR.parent / "adapters" / "concept_world_erase_red.safetensors"
    good = runner.invoke(app, ["inspect", str(shipped), "--base", str(CONCEPT_WORLD_DIR)])
    assert good.exit_code == 0 and "fits --base" in good.output
    assert "fingerprint matches: trained on these weights" in flat(good.output)
    args = ["inspect", str(shipped), "--json", "--base"]
    assert (
        json.loads(runner.invoke(app, [*args, str(CONCEPT_WORLD_DIR)]).stdout)["base_fingerprint"]
        == "matches"
    )
    other = tmp_path / "other" / "unet"  # the same architecture, other weights
    other.mkdir(parents=True)
    shutil.copy(CONCEPT_WORLD_DIR / "unet" / "config.json", other / "config.json")
    weights = load_file(CONCEPT_WORLD_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    save_file(
        {k: v + 1e-3 for k, v in weights.items()}, other / "diffusion_pytorch_model.safetensors"
    )
    verdict = json.loads(runner.invoke(app, [*args, str(other.parent)]).stdout)["base_fingerprint"]
    assert verdict == "differs"
    (other / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    verdict = json.loads(runner.invoke(app, [*args, str(other.parent)]).stdout)["base_fingerprint"]
    assert verdict == "unreadable weights"
    (other / "diffusion_pytorch_model.safetensors").unlink()
    verdict = json.loads(runner.invoke(app, [*args, str(other.parent)]).stdout)["base_fingerprint"]
    assert verdict == "no weights"
    assert os.path.isdir(CONCEPT_WORLD_DIR / "unet")
