"""Prompts per second of ``prompt_rules`` with the bundled rules on one core.

Run: ``.venv/bin/python benchmarks/prompt_rules_speed.py`` (target >= 50,000 prompts/s).
The baseline row (``normalize`` only, and plain ``str.lower``) is measured in the same
process, so the ratios hold across machines.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

from _data import read_coco, read_i2p
from _report import Report, add_arguments, first_paragraph
from rich.console import Console

from safety_lora.classifiers.normalize import normalize
from safety_lora.classifiers.prompt_rules import PromptRulesConfig

NAME = "prompt_rules_speed"


def best_rate(
    fn: Callable[[Sequence[str]], object], prompts: Sequence[str], repeats: int = 25
) -> float:
    """Best-of-``repeats`` prompts per second of ``fn`` over all ``prompts``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(prompts)
        best = min(best, time.perf_counter() - t0)
    return len(prompts) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=first_paragraph(__doc__))
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "Prompt rules: speed", first_paragraph(__doc__))
    prompts = read_coco() + [r.prompt for r in read_i2p()]
    clf = PromptRulesConfig().build()
    rows = [
        ("str.lower (baseline)", best_rate(lambda ps: [p.lower() for p in ps], prompts)),
        ("normalize", best_rate(lambda ps: [normalize(p) for p in ps], prompts)),
        ("prompt_rules.classify", best_rate(clf.classify, prompts)),
    ]
    table = report.table(
        f"prompt_rules speed, {len(prompts)} COCO+I2P prompts, one thread",
        ["step", "prompts/s", "x slower than str.lower"],
    )
    for name, rate in rows:
        table.add_row(name, f"{rate:,.0f}", f"{rows[0][1] / rate:,.1f}")
    Console().print(table.rich())
    verdict = "meets" if rows[-1][1] >= 50_000 else "MISSES"
    conclusion = f"classify: {rows[-1][1]:,.0f} prompts/s ({verdict} the 50,000/s target)"
    table.note(conclusion)
    print(conclusion)
    report.save(args)


if __name__ == "__main__":
    main()
