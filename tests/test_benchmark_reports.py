"""The benchmarks' results files, from which the documentation's benchmark pages are generated.

Fast: reads the files in ``benchmarks/results/`` and exercises ``benchmarks/_report.py``; no
benchmark runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from _report import (  # noqa: E402
    REQUIRED,
    RESULTS,
    Report,
    ReportTable,
    add_arguments,
    command,
    first_paragraph,
)

FILES = sorted(RESULTS.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path.name}: not a JSON object"
    return data


def _when(value: Any) -> datetime.datetime:
    assert isinstance(value, str)
    return datetime.datetime.fromisoformat(value)


def test_results_folder_holds_files() -> None:
    assert FILES, f"no results files in {RESULTS}"
    assert RESULTS == BENCHMARKS / "results"


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_results_file(path: Path) -> None:
    data = _load(path)
    missing = [key for key in REQUIRED if key not in data]
    assert not missing, f"{path.name}: missing {missing}"
    assert data["benchmark"] == path.stem
    for key in ("title", "description"):
        assert isinstance(data[key], str) and data[key].strip(), f"{path.name}: empty {key}"
    assert _when(data["started"]) <= _when(data["finished"])
    assert isinstance(data["machine"], dict) and data["machine"]
    assert data["commit"] is None or isinstance(data["commit"], str)

    # The command names an existing measurement script of benchmarks/.
    command = shlex.split(data["command"])
    assert command[0] == "python", data["command"]
    script = command[1]
    assert script.startswith("benchmarks/") and script.endswith(".py"), data["command"]
    assert (BENCHMARKS / Path(script).name).is_file(), f"{path.name}: no {script}"
    assert not Path(script).name.startswith("_"), data["command"]

    tables = data["tables"]
    assert isinstance(tables, list) and tables, f"{path.name}: no tables"
    for table in tables:
        assert isinstance(table["title"], str) and table["title"]
        columns = table["columns"]
        assert isinstance(columns, list) and columns
        assert all(isinstance(c, str) for c in columns)
        assert isinstance(table["notes"], list)
        assert all(isinstance(n, str) for n in table["notes"])
        assert isinstance(table["rows"], list) and table["rows"], f"{table['title']}: no rows"
        for row in table["rows"]:
            assert isinstance(row, list) and all(isinstance(cell, str) for cell in row)
            assert len(row) == len(columns), (
                f"{path.name}, {table['title']!r}: {len(row)} cells for {len(columns)} columns"
            )


def test_add_row_refuses_a_wrong_cell_count() -> None:
    table = ReportTable("t", ["name", "value"])
    with pytest.raises(ValueError, match="1 cells for 2 columns"):
        table.add_row("only one")
    with pytest.raises(ValueError, match="3 cells for 2 columns"):
        table.add_row("a", "b", "c")
    assert table.rows == []
    table.add_row("a", 1.5)
    assert table.rows == [["a", "1.5"]]


def test_report_tables_keep_their_order_and_notes() -> None:
    report = Report("x", "X", "What x measures.")
    first = report.table("first", ["a", "b"], justify="right")
    second = report.add(ReportTable("second", ["c"]))
    first.add_row("1", "2")
    first.note("a note")
    second.add_row("3")
    tables = report.payload()["tables"]
    assert [t["title"] for t in tables] == ["first", "second"]
    assert tables[0] == {"title": "first", "columns": ["a", "b"], "rows": [["1", "2"]],
                         "notes": ["a note"]}  # fmt: skip
    assert first.rich().caption == "a note"
    with pytest.raises(ValueError, match="justifications"):
        report.table("bad", ["a", "b"], justify=["left"])


def test_write_and_results_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser, "x")
    defaults = parser.parse_args([])
    assert defaults.results == RESULTS / "x.json" and not defaults.no_results
    assert parser.parse_args(["--no-results"]).no_results

    report = Report("x", "X", "What x measures.")
    report.table("t", ["a"]).add_row("1")
    target = tmp_path / "sub" / "x.json"
    assert report.save(parser.parse_args(["--results", str(target)])) == target
    data = _load(target)
    assert all(key in data for key in REQUIRED)
    assert data["tables"][0]["rows"] == [["1"]]
    assert list(tmp_path.rglob("*.partial")) == []
    assert (
        report.save(parser.parse_args(["--no-results", "--results", str(tmp_path / "y")])) is None
    )
    assert not (tmp_path / "y").exists()


def test_command_and_description() -> None:
    argv = ["/somewhere/benchmarks/x.py", "--seeds", "8", "--results", "/tmp/x.json", "--a=b c"]
    assert command(argv) == "python benchmarks/x.py --seeds 8 '--a=b c'"
    assert command(["x.py", "--results=/tmp/y.json"]) == "python benchmarks/x.py"
    doc = """First line
    and its second.

    Usage, left out.
    """
    assert first_paragraph(doc) == "First line and its second."
