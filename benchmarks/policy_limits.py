"""How long hostile policy files take to be refused (the hardening sweep's cases).

    python benchmarks/policy_limits.py [--repeats 3] [--results PATH | --no-results]

Each case is a policy text an attacker could write: a YAML alias bomb in a typed field, 1,000
levels of nesting, 50,000 concepts in ``closed_form.erase``, a file over the size cap, and a
blank concept. Every one must end in a ``PolicyError`` (the table says which limit named
it); the table gives the median seconds of ``Policy.from_text`` over the repeats, next to a
plain valid policy as the baseline measured in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import time

from _report import Report, add_arguments, first_paragraph
from rich.console import Console

from safety_lora.policies import Policy, PolicyError

NAME = "policy_limits"
BASE = "classifiers: [{kind: static, scores: {sexual: 0.0}}]\n"


def _bomb() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, name = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return BASE + "\n".join(lines) + "\ndescription: *j\n"


CASES: dict[str, str] = {
    "valid policy (baseline)": BASE + "name: plain\n",
    "alias bomb in description": _bomb(),
    "1,000 levels of nesting": BASE + "description: " + "[" * 1000 + "]" * 1000 + "\n",
    "50,000 concepts in closed_form.erase": BASE
    + "steering: {adapters: [{categories: [sexual], closed_form: {erase: ["
    + ",".join(f"c{i}" for i in range(50_000))
    + "]}}]}\n",
    "2 MiB file": BASE + "description: " + "x" * (2 * 1024 * 1024) + "\n",
    "blank concept": BASE
    + 'steering: {adapters: [{categories: [sexual], closed_form: {erase: [" "]}}]}\n',
}


def _once(text: str) -> tuple[float, str]:
    start = time.perf_counter()
    try:
        Policy.from_text(text, source="case.yaml")
        outcome = "valid"
    except PolicyError as e:
        outcome = str(e).splitlines()[0][:90]
    return time.perf_counter() - start, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=first_paragraph(__doc__))
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case")
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(
        NAME, "Hostile policy files: how fast they are refused", first_paragraph(__doc__)
    )
    seconds: dict[str, list[float]] = {name: [] for name in CASES}
    outcomes: dict[str, str] = {}
    for _ in range(args.repeats):  # every case once per round: load drifts hit all alike
        for name, text in CASES.items():
            took, outcomes[name] = _once(text)
            seconds[name].append(took)
    table = report.table("Policy.from_text on each case", ["case", "median s", "outcome"])
    for name in CASES:
        table.add_row(name, f"{statistics.median(seconds[name]):.3f}", outcomes[name])
    table.note(f"Median of {args.repeats} interleaved runs in one process.")
    Console().print(table.rich())
    report.save(args)


if __name__ == "__main__":
    main()
