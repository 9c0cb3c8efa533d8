"""compare's default run, ``safety-lora compare --erase red``, timed as a user runs it.

    python benchmarks/compare_default.py [--out DIR] [--results PATH | --no-results]

Runs the command in a child process (its default workers: 2 on a CPU), into a fresh folder,
and times the wall clock from start to the written report; the goal is at most 20 minutes on
this 2-core machine. Then, from the run's ``report.json``, the verdict table (each claim's
verdict, the comparisons that decided it, their margins, and the seeds an undecided claim
would need), and from its ``logs/units.jsonl`` where the time went: each kind of unit's
count and seconds (summed over the workers, so they add up to about twice the wall time).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import Report, add_arguments, first_paragraph
from rich.console import Console

NAME = "compare_default"
#: The wall-clock goal of the default run on a 2-core CPU (issue: "in 20 minutes").
GOAL_MINUTES = 20


def unit_kind(out: Path, unit: str) -> str:
    """The report's kind of a unit: a training's role (its learning-rate scale for stability
    runs, its variant for regularity ones), or the unit's folder (eval, attack, cost, ...)."""
    folder = unit.split("/", 1)[0]
    if folder != "train":
        return folder
    row = json.loads((out / "units" / f"{unit}.json").read_text())
    if "role" not in row:
        return "solve (closed form, text embedding)"
    if row["role"] == "stability":
        return f"train: stability {row['lr_scale']:g}x"
    return f"train: {row['role']}" + ("" if row["variant"] == "reg" else f" {row['variant']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=first_paragraph(__doc__))
    parser.add_argument("--out", type=Path, help="the run's folder (default: a temporary one)")
    add_arguments(parser, NAME)
    args = parser.parse_args(argv)
    console = Console(width=150)
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch) / "cmp"
        cli = "from safety_lora.cli import main; main()"
        command = [sys.executable, "-c", cli, "compare", "--erase", "red", "--out", str(out)]
        console.print(f"running safety-lora {' '.join(command[3:])} (about {GOAL_MINUTES} min)")
        command.append("--no-progress")
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - began
        data = json.loads((out / "report.json").read_text())
        timed = [json.loads(line) for line in (out / "logs" / "units.jsonl").open()]
        kinds: dict[str, list[float]] = collections.defaultdict(list)
        for line in timed:
            kinds[unit_kind(out, line["unit"])].append(line["seconds"])

    report = Report(NAME, "compare's default run", first_paragraph(__doc__))
    run = report.table("The default run", ["wall", "goal", "units computed", "unit seconds"])
    spent = sum(sum(v) for v in kinds.values())
    run.add_row(f"{wall / 60:.1f} min", f"{GOAL_MINUTES} min", str(len(timed)), f"{spent:.0f} s")
    verdicts = report.table(
        "Verdicts", ["claim", "verdict", "decided by", "margins", "seeds", "seeds needed"]
    )
    for v in data["verdicts"]:
        needed = "-" if v["seeds_needed"] is None else str(v["seeds_needed"])
        verdicts.add_row(
            v["claim"], v["verdict"], "; ".join(v["decided_by"]), "; ".join(v["margins"]),
            str(v["seeds"]), needed,
        )  # fmt: skip
    where = report.table("Where the time went", ["unit", "count", "seconds", "share"])
    for kind, seconds in sorted(kinds.items(), key=lambda kv: -sum(kv[1])):
        total = sum(seconds)
        where.add_row(kind, str(len(seconds)), f"{total:.0f}", f"{total / spent:.0%}")
    for printed in report.tables:
        console.print(printed.rich())
    report.save(args)


if __name__ == "__main__":
    main()
