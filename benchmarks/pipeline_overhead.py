"""SafePipeline overhead on the tiny pipeline at 20 steps (classifier time excluded).

Prints a table of median wall times and ratios against the raw pipeline measured in the same
process: the wrapper alone (no adapter, static classifier), dynamic (unfused) steering and
fused steering; then peak RSS of a fresh process running the raw vs the wrapped pipeline.

    .venv/bin/python benchmarks/pipeline_overhead.py [--steps 20] [--repeats 15]
        [--results PATH | --no-results]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _report import Report, ReportTable, add_arguments, first_paragraph

from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_lora_file, tiny_pipeline

NAME = "pipeline_overhead"
PROMPT = "a photo of a cat"
_ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]
STATIC: dict[str, Any] = {"prompt": {"classifiers": _ZERO}, "classifiers": _ZERO}


def _policy(lora: Path | None, mode: str = "dynamic") -> Policy:
    adapters = [{"path": str(lora), "categories": ["sexual"]}] if lora else []
    return Policy.model_validate({**STATIC, "steering": {"adapters": adapters, "mode": mode}})


def _classifier_s(out: Any) -> float:
    return sum(sum(d.timings_ms.values()) for d in out.decisions) / 1e3


def timings(steps: int, repeats: int, report: Report) -> ReportTable:
    """Each variant wraps its own copy of the tiny pipeline; raw and wrapped calls alternate,
    so machine load drifts cancel out of the ratio."""
    raw_pipe = tiny_pipeline()
    kw = {"num_inference_steps": steps, "output_type": "np"}

    def raw() -> float:
        start = time.perf_counter()
        raw_pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kw)
        return time.perf_counter() - start

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lora = tiny_lora_file(raw_pipe, Path(tmp) / "safe.safetensors")
        for label, policy in [
            ("wrapper, no adapter", _policy(None)),
            ("steering unfused", _policy(lora)),
            ("steering fused", _policy(lora, "fused")),
        ]:
            safe = SafePipeline(tiny_pipeline(), policy)

            def wrapped(safe: SafePipeline = safe) -> float:
                start = time.perf_counter()
                out = safe(PROMPT, generator=torch.Generator().manual_seed(0), **kw)
                # Classifier time is excluded: subtract what the decisions report.
                return time.perf_counter() - start - _classifier_s(out)

            raw(), wrapped()  # warm-up
            pairs = [(raw(), wrapped()) for _ in range(repeats)]
            base = statistics.median(r for r, _ in pairs)
            rows.append((label, base, statistics.median(w for _, w in pairs)))
    table = report.table(
        f"tiny SD pipeline, {steps} steps, median of {repeats} alternating pairs, 1 thread",
        ["variant", "raw ms", "wrapped ms", "ratio"],
    )
    for label, base, t in rows:
        table.add_row(label, f"{base * 1e3:.1f}", f"{t * 1e3:.1f}", f"{t / base:.3f}x")
    print_plain(table)
    return table


#: The printed width of each column of the timings table (the first left-aligned).
WIDTHS = (22, 10, 12, 8)


def print_plain(table: ReportTable) -> None:
    """The timings table as plain fixed-width text."""
    print(f"\n{table.title}")
    for cells in [table.columns, *table.rows]:
        first, *rest = cells
        print(
            f"{first:<{WIDTHS[0]}}"
            + "".join(f"{c:>{w}}" for c, w in zip(rest, WIDTHS[1:], strict=True))
        )


def rss(mode: str, steps: int) -> None:
    """Child process: build, run once, print peak RSS in MiB."""
    pipe = tiny_pipeline()
    kw = {"num_inference_steps": steps, "generator": torch.Generator().manual_seed(0)}
    if mode == "raw":
        pipe(PROMPT, **kw)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            lora = tiny_lora_file(pipe, Path(tmp) / "safe.safetensors")
            SafePipeline(pipe, _policy(lora))(PROMPT, **kw)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rss", choices=["raw", "wrapped"], help=argparse.SUPPRESS)
    add_arguments(parser, NAME)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.rss:
        rss(args.rss, args.steps)
        return
    report = Report(NAME, "SafePipeline overhead", first_paragraph(__doc__))
    table = timings(args.steps, args.repeats, report)
    peak = {}
    for mode in ("raw", "wrapped"):
        cmd = [sys.executable, __file__, "--rss", mode, "--steps", str(args.steps)]
        peak[mode] = float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    unet_mib = sum(p.numel() * p.element_size() for p in tiny_pipeline().unet.parameters()) / 2**20
    memory = (
        f"peak RSS (fresh process): raw {peak['raw']:.1f} MiB, wrapped {peak['wrapped']:.1f} "
        f"MiB, +{peak['wrapped'] - peak['raw']:.1f} MiB (UNet weights {unet_mib:.2f} MiB)"
    )
    table.note(memory)
    print(f"\n{memory}")
    report.save(args)


if __name__ == "__main__":
    main()
