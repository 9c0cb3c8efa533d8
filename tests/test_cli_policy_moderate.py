"""The ``policy`` and ``moderate`` commands, driven like a user would."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from safety_lora.cli import app

runner = CliRunner(env={"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"})
REPO = Path(__file__).resolve().parents[1]


def test_validate_presets_ok() -> None:
    files = [str(REPO / "policies" / f"{n}.yaml") for n in ("strict", "balanced", "permissive")]
    result = runner.invoke(app, ["policy", "validate", *files])
    assert result.exit_code == 0, result.output
    assert result.output.count("is valid") == 3


def test_validate_reports_every_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nclassifiers:\n  - kind: static\n    treshold: 0.5\n")
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nclassifiers: [{kind: static, scores: {sexual: 0.0}}]\n")
    result = runner.invoke(app, ["policy", "validate", str(good), str(bad)])
    assert result.exit_code == 1
    assert "good.yaml: policy 'custom' is valid" in result.output
    assert "classifiers.0.treshold: unknown key" in result.output


def test_schema_is_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["policy", "schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "Policy"
    out = tmp_path / "schema.json"
    assert runner.invoke(app, ["policy", "schema", "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text())["title"] == "Policy"
    missing = runner.invoke(app, ["policy", "schema", "-o", str(tmp_path / "no" / "x.json")])
    assert missing.exit_code == 2
    assert "cannot write (No such file or directory)" in missing.output


def policy_file(tmp_path: Path, sequence: list[dict[str, float]]) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "classifiers": [{"kind": "static", "sequence": sequence}],
                "categories": {"sexual": {"threshold": 0.5, "action": "block"}},
                "prompt": {"rules": {"sexual": {"refuse_at": 0.8}}},
                "audit": {"path": "audit.jsonl"},
            }
        )
    )
    return path


def test_moderate_images_json_and_exit_status(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16), (10, 200, 10)).save(folder / name)
    policy = policy_file(tmp_path, [{"sexual": 0.1}])
    ok = runner.invoke(app, ["moderate", str(folder), "--policy", str(policy), "--json"])
    assert ok.exit_code == 0, ok.output
    rows = [json.loads(line) for line in ok.stdout.splitlines()]
    assert [(Path(r["item"]).name, r["action"]) for r in rows] == [
        ("a.png", "allow"),
        ("b.png", "allow"),
    ]
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 2

    blocked = policy_file(tmp_path, [{"sexual": 0.1}, {"sexual": 0.9}])
    result = runner.invoke(app, ["moderate", str(folder), "--policy", str(blocked)])
    assert result.exit_code == 1
    assert "block" in result.output and "categories.sexual" in result.output


def test_moderate_corrupt_image_is_reported_and_others_kept(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("RGB", (16, 16)).save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    policy = policy_file(tmp_path, [{"sexual": 0.0}])
    result = runner.invoke(
        app, ["moderate", str(corrupt), str(good), "--policy", str(policy), "--json"]
    )
    assert result.exit_code == 1
    rows = {Path(r["item"]).name: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["corrupt.png"]["action"] == "error"
    assert "corrupt.png" in rows["corrupt.png"]["reasons"][0]
    assert rows["good.png"]["action"] == "allow"


def test_moderate_skips_what_is_plainly_not_an_image_and_judges_the_rest(tmp_path: Path) -> None:
    folder = tmp_path / "generated"  # what `safety-lora generate` leaves beside its images
    folder.mkdir()
    Image.new("RGB", (16, 16), (10, 200, 10)).save(folder / "image_000.png")
    (folder / "decisions.json").write_text("[]\n")
    (folder / "audit.jsonl").write_text("{}\n")
    (folder / "audit.jsonl.lock").write_bytes(b"")
    Image.new("RGB", (16, 16)).save(folder / "renamed.json", format="PNG")  # content decides
    (folder / "fake.png").write_text("an image's name, not an image's bytes")
    policy = policy_file(tmp_path, [{"sexual": 0.0}])
    result = runner.invoke(app, ["moderate", str(folder), "--policy", str(policy), "--json"])
    rows = {Path(r["item"]).name: r["action"] for r in map(json.loads, result.stdout.splitlines())}
    assert rows == {"fake.png": "error", "image_000.png": "allow", "renamed.json": "allow"}
    assert "skipped 3 files that are not an image" in result.stderr
    assert result.exit_code == 1  # the file that claims to be an image and is not


def test_moderate_prompts(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("prompt\na bowl of fruit on a table\nexplicit porn of a nude woman\n")
    policy = policy_file(tmp_path, [{"sexual": 0.0}])
    result = runner.invoke(
        app, ["moderate", "--prompts", str(csv), "--policy", str(policy), "--json"]
    )
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["action"] for r in rows] == ["allow", "refuse"]
    assert rows[1]["rule"] == "prompt.rules.sexual.refuse_at"

    bad_csv = tmp_path / "q.csv"
    bad_csv.write_text("text\nhello\n")
    result = runner.invoke(app, ["moderate", "--prompts", str(bad_csv), "--policy", str(policy)])
    assert result.exit_code == 2
    assert "needs a 'prompt' column" in result.output


def test_moderate_needs_input_and_a_valid_policy(tmp_path: Path) -> None:
    assert (
        runner.invoke(
            app, ["moderate", "--policy", str(policy_file(tmp_path, [{"sexual": 0.0}]))]
        ).exit_code
        == 2
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 3\n")
    result = runner.invoke(app, ["moderate", "--prompt", "hi", "--policy", str(bad)])
    assert result.exit_code == 2
    assert "version" in result.output
