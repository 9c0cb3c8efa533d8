"""The audit log under concurrent threads and processes: every line whole, none lost."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from safety_lora.audit import AuditLog, read_audit_log
from safety_lora.cli import app
from safety_lora.policies import Policy, PolicyEngine

WRITER = """
import sys
from safety_lora.audit import AuditLog
log = AuditLog(sys.argv[1])
for i in range(int(sys.argv[3])):
    log.write([{"writer": sys.argv[2], "i": i, "pad": "x" * 5000}])
"""


def test_threads_never_interleave_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a" / "audit.jsonl")
    n_threads, n_lines = 8, 50

    def work(t: int) -> None:
        for i in range(n_lines):
            log.write([{"writer": t, "i": i, "pad": "y" * 3000}, {"writer": t, "i": -i - 1}])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = read_audit_log(log.path)
    assert len(records) == n_threads * n_lines * 2
    for t in range(n_threads):
        mine = [r["i"] for r in records if r["writer"] == t and r["i"] >= 0]
        assert mine == list(range(n_lines))  # each writer's lines in its own order, all present


def test_processes_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), "100"]) for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    records = read_audit_log(path)
    assert len(records) == 400
    assert {(r["writer"], r["i"]) for r in records} == {
        (str(w), i) for w in range(4) for i in range(100)
    }


def test_engine_records_one_line_per_decision_without_prompt_text(tmp_path: Path) -> None:
    policy = Policy.from_dict(
        {
            "version": 1,
            "classifiers": [{"kind": "static", "scores": {"sexual": 0.7}}],
            "categories": {"sexual": {"threshold": 0.5, "action": "blur"}},
            "audit": {"path": str(tmp_path / "audit.jsonl")},
        }
    )
    engine = PolicyEngine(policy)
    pd = engine.check_prompt("a quiet lake", request_id="req-1")
    decisions = engine.judge([Image.new("RGB", (8, 8))] * 2, prompt_decision=pd)
    engine.record(decisions, prompt="a quiet lake")
    records = read_audit_log(tmp_path / "audit.jsonl")
    assert [(r["kind"], r["image_index"]) for r in records] == [("image", 0), ("image", 1)]
    first = records[0]
    assert first["action"] == "blur"
    assert first["request_id"] == "req-1"
    assert first["scores"] == {"sexual": 0.7}
    assert len(first["prompt_sha256"]) == 64
    assert "prompt_text" not in first
    assert "a quiet lake" not in (tmp_path / "audit.jsonl").read_text()
    assert set(first["classifiers"]) == {"learned", "static"}
    assert "static" in first["timings_ms"]


def test_prompt_text_only_when_the_policy_opts_in(tmp_path: Path) -> None:
    policy = Policy.from_dict(
        {
            "version": 1,
            "classifiers": [{"kind": "static", "scores": {"sexual": 0.0}}],
            "audit": {"path": str(tmp_path / "a.jsonl"), "include_prompt": True},
        }
    )
    engine = PolicyEngine(policy)
    engine.record(engine.judge([Image.new("RGB", (8, 8))]), prompt="a red kite")
    assert read_audit_log(tmp_path / "a.jsonl")[0]["prompt_text"] == "a red kite"


def test_replicas_files_merge_in_time_order(tmp_path: Path) -> None:
    a, b = tmp_path / "audit.ingress-1.jsonl", tmp_path / "audit.generator-2.jsonl"
    a.write_text(
        '{"time": "2026-01-01T10:00:00+00:00", "n": 1}\n'
        '{"time": "2026-01-01T10:00:02+00:00", "n": 3}\n',
        encoding="utf-8",
    )
    # another replica, another zone: 10:00:01 UTC sorts between the two
    b.write_text('{"time": "2026-01-01T11:00:01+01:00", "n": 2}\n', encoding="utf-8")
    out = tmp_path / "merged" / "audit.jsonl"
    result = CliRunner().invoke(app, ["audit", "merge", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [r["n"] for r in read_audit_log(out)] == [1, 2, 3]
    assert "3 lines from 2 files" in result.output
    b.write_text('{"n": 4}\n', encoding="utf-8")
    bad = CliRunner().invoke(app, ["audit", "merge", str(a), str(b), "--out", str(out)])
    assert bad.exit_code == 2 and "audit.generator-2.jsonl:1: no ISO 8601 'time'" in bad.output
    same = CliRunner().invoke(app, ["audit", "merge", str(a), "--out", str(a)])
    assert same.exit_code == 2 and "is one of the inputs" in same.output
