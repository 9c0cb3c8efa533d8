"""Batch moderation on Ray Data, on a real local Ray instance: one row per input (bad files
included), the same verdicts as the guard, resumable, prompts from CSV and Parquet.

``local_ray`` (tests/conftest.py) is the Ray instance these tests and the Ray Serve tests share.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from safety_lora.guard import SafetyGuard
from safety_lora.policies.schema import Policy
from safety_lora.ray_moderation import COLUMNS, moderate_dataset

pytestmark = pytest.mark.slow  # make test-fast leaves it out

POLICY = """
name: batch
categories: {sexual: {threshold: 0.5, action: blur}}
classifiers: [{kind: concept_world, unsafe: {sexual: [red]}}]
prompt:
  classifiers: [{kind: prompt_rules, extra_terms: {violence: [zorblax]}}]
  rules: {violence: {steer_at: 0.3, refuse_at: 0.8}}
"""


@pytest.fixture
def policy(tmp_path: Path) -> Policy:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY, encoding="utf-8")
    return Policy.from_file(path)


def _folder(root: Path, n: int) -> Path:
    """``n`` images, red and grey in turn (one in a subfolder), and two files that are not."""
    root.mkdir()
    (root / "sub").mkdir()
    for i in range(n):
        colour = (220, 30, 30) if i % 2 == 0 else (128, 128, 128)
        folder = root / "sub" if i == 0 else root
        Image.new("RGB", (32, 32), colour).save(folder / f"{i:03d}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "notes.txt").write_text("not an image", encoding="utf-8")
    return root


def test_a_folder_gives_one_row_per_file_with_the_guards_verdicts(
    local_ray: None, policy: Policy, tmp_path: Path
) -> None:
    images = _folder(tmp_path / "images", 9)
    out = tmp_path / "results.parquet"
    counts = moderate_dataset(images, out, policy, actors=2, batch_size=4)
    rows = pq.read_table(out).to_pylist()
    files = sorted(str(p) for p in images.rglob("*") if p.is_file())
    assert [r["item"] for r in rows] == files
    assert tuple(pq.read_table(out).column_names) == COLUMNS
    bad = {r["item"]: r for r in rows if r["action"] == "error"}
    assert set(bad) == {str(images / "broken.png"), str(images / "notes.txt")}
    assert all(r["flagged"] and r["error"].startswith(f"{r['item']}: ") for r in bad.values())
    assert "not a recognised image format" in bad[str(images / "notes.txt")]["error"]
    guard = SafetyGuard(policy)
    for row in rows:
        if row["action"] == "error":
            continue
        with Image.open(row["item"]) as image:
            (expected,) = guard.review([image])
        assert (row["action"], row["rule"]) == (expected.action.value, expected.rule)
        assert json.loads(row["scores"]) == expected.to_dict()["scores"]
    assert counts == {"blur": 5, "allow": 4, "error": 2}
    assert not (tmp_path / "results.parquet.parts").exists()


def test_a_rerun_judges_only_what_is_missing(
    local_ray: None, policy: Policy, tmp_path: Path
) -> None:
    images = _folder(tmp_path / "images", 6)
    out = tmp_path / "results.parquet"
    moderate_dataset(images, out, policy, actors=1)
    # a job killed after its first batch: its rows are a part file, no results file yet
    parts = tmp_path / "results.parquet.parts"
    parts.mkdir()
    first = pq.read_table(out).slice(0, 3)
    pq.write_table(first, parts / "part-000000.parquet")
    out.unlink()
    seen: list[tuple[int, int]] = []
    counts = moderate_dataset(
        images, out, policy, actors=1, on_progress=lambda d, t: seen.append((d, t))
    )
    assert seen[0] == (3, 8) and seen[-1] == (8, 8)
    assert pq.read_table(out).column("index").to_pylist() == list(range(8))
    assert sum(counts.values()) == 8
    # new files later: only they are judged, the table keeps every row once
    Image.new("RGB", (32, 32), (220, 30, 30)).save(images / "new.png")
    seen.clear()
    moderate_dataset(images, out, policy, actors=1, on_progress=lambda d, t: seen.append((d, t)))
    table = pq.read_table(out)
    assert seen[0] == (8, 9) and table.num_rows == 9
    assert len(set(table.column("item").to_pylist())) == 9


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_prompts_from_csv_or_parquet(
    local_ray: None, policy: Policy, tmp_path: Path, suffix: str
) -> None:
    prompts = ["a cat on a sofa", "a zorblax attack", "a red circle"]
    source = tmp_path / f"prompts{suffix}"
    if suffix == ".csv":
        source.write_text("prompt\n" + "\n".join(prompts) + "\n", encoding="utf-8")
    else:
        pq.write_table(pa.table({"prompt": prompts, "other": [1, 2, 3]}), source)
    out = tmp_path / "results.parquet"
    moderate_dataset(source, out, policy, actors=1)
    rows = pq.read_table(out).to_pylist()
    assert [r["item"] for r in rows] == prompts
    assert [r["action"] for r in rows] == ["allow", "refuse", "allow"]
    assert rows[1]["flagged"] and rows[1]["rule"] == "prompt.rules.violence.refuse_at"


def test_sources_without_prompts_are_named(policy: Policy, tmp_path: Path) -> None:
    source = tmp_path / "p.csv"
    source.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.csv: needs a 'prompt' column"):
        moderate_dataset(source, tmp_path / "o.parquet", policy)
    with pytest.raises(ValueError, match="give a folder of images"):
        moderate_dataset(tmp_path / "policy.yaml", tmp_path / "o.parquet", policy)
    with pytest.raises(ValueError, match="is the source itself"):
        moderate_dataset(source, source, policy)


def test_cli_moderate_ray(tmp_path: Path) -> None:
    images = _folder(tmp_path / "images", 4)
    (tmp_path / "policy.yaml").write_text(POLICY, encoding="utf-8")
    out = tmp_path / "cli.parquet"
    command = [str(Path(sys.executable).with_name("safety-lora")), "moderate", "--ray", str(images)]
    command += ["--out", str(out), "--policy", str(tmp_path / "policy.yaml")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "300"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr  # red images are blurred: flagged
    assert "6 rows" in done.stderr and "error" in done.stderr
    assert pq.read_table(out).num_rows == 6
    wrong = subprocess.run(
        [*command[:4], "--out", str(tmp_path / "x.csv")], capture_output=True, text=True, env=env
    )
    assert wrong.returncode == 2 and "write a .parquet file" in wrong.stderr
