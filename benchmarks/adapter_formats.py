"""Adapter formats: load time, peak memory and per-step UNet cost (unfused / fused) per family.

One adapter per family/format on the concept-world UNet (``safety_lora.models.concept_world``)
or, when that is not shipped, the tiny random SD UNet of ``safety_lora.testing``. LoHa, LoKr
and full files are written by the ``lycoris-lora`` package; the PEFT file by diffusers and the
kohya file by our converter. Load peak memory is the growth of the process' max RSS while
loading, measured in a fresh child process per row. Step cost is the median UNet forward time
relative to the base UNet timed next to it (fastest of ``--repeat``; fused should be ~1.00x).

    .venv/bin/python benchmarks/adapter_formats.py [--repeat 30] [--rank 8] [--unet tiny]
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import torch
from rich.console import Console
from rich.table import Table

from safety_lora.adapters import convert, load_adapter

ROWS: dict[str, dict[str, Any]] = {
    "lora (peft)": {"algo": "locon", "to": "peft"},
    "lora (kohya)": {"algo": "locon", "to": "kohya"},
    "loha": {"algo": "loha"},
    "lokr": {"algo": "lokr"},
    "full": {"algo": "full"},
}


def base_unet(kind: str) -> tuple[torch.nn.Module, str]:
    """The UNet to measure on, and its description."""
    if kind == "concept-world":
        from safety_lora.models import concept_world

        try:
            return concept_world().unet.eval(), "concept-world UNet"
        except FileNotFoundError:
            pass
    from safety_lora.testing import tiny_pipeline

    return tiny_pipeline("sd").unet.eval(), "tiny SD UNet (concept-world not shipped)"


def inputs(unet: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of 2 latents, timesteps and text states matching the UNet's config."""
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    sample = torch.randn(2, cfg.in_channels, size, size, generator=g)
    text = torch.randn(2, 8, cfg.cross_attention_dim, generator=g)
    return sample, torch.tensor([10, 500]), text


def write_adapters(unet: torch.nn.Module, folder: Path, rank: int) -> dict[str, Path]:
    """One adapter file per row (LyCORIS writes the factorised ones)."""
    from lycoris import create_lycoris

    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    files: dict[str, Path] = {}
    for row, spec in ROWS.items():
        work = copy.deepcopy(unet)
        net = create_lycoris(work, 1.0, linear_dim=rank, linear_alpha=rank / 2, algo=spec["algo"])
        net.apply_to()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in net.parameters():
                scale = 0.01 if spec["algo"] == "full" else 0.1
                p.add_(torch.randn(p.shape, generator=g) * scale)
        path = folder / f"{row.split()[0]}.safetensors"
        net.save_weights(str(path), None, {})
        if "to" in spec:
            out = folder / f"{spec['to']}.safetensors"
            convert(path, out, to=spec["to"], unet=unet)
            path = out
        files[row] = path
    return files


def step_ms(unet: torch.nn.Module, batch: tuple[torch.Tensor, ...], repeat: int) -> float:
    """Fastest of ``repeat`` UNet forwards, in ms (the least disturbed by other processes)."""
    times = []
    with torch.no_grad():
        unet(*batch[:2], encoder_hidden_states=batch[2])
        for _ in range(repeat):
            start = time.perf_counter()
            unet(*batch[:2], encoder_hidden_states=batch[2])
            times.append(time.perf_counter() - start)
    return 1000 * min(times)


def child_peak(kind: str, path: Path) -> None:
    """In a fresh process: print the peak RSS growth (MiB) while loading ``path``.

    RSS is sampled every 0.2 ms by a thread (the process' max RSS is set by imports).
    """
    unet, _ = base_unet(kind)
    proc = psutil.Process()
    gc.collect()
    before = proc.memory_info().rss
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            time.sleep(0.0002)

    thread = threading.Thread(target=sample)
    thread.start()
    load_adapter(unet, path, adapter_name="a")
    done.set()
    thread.join()
    peak = max(peak, proc.memory_info().rss)
    print((peak - before) / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--unet", choices=["concept-world", "tiny"], default="concept-world")
    parser.add_argument("--child-peak", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child_peak:
        child_peak(args.unet, args.child_peak)
        return
    unet, desc = base_unet(args.unet)
    batch = inputs(unet)
    base_ms = step_ms(unet, batch, args.repeat)
    table = Table(title=f"Adapter formats on the {desc}, rank {args.rank}, 1 thread")
    for col in ("adapter", "params", "load ms", "load peak MiB", "unfused x", "fused x"):
        table.add_column(col, justify="left" if col == "adapter" else "right")
    table.add_row("base", "-", "-", "-", f"1.00 ({base_ms:.1f} ms)", "1.00")
    with tempfile.TemporaryDirectory() as tmp:
        files = write_adapters(unet, Path(tmp), args.rank)
        for row, path in files.items():
            loads = []
            for _ in range(5):
                fresh = copy.deepcopy(unet)
                start = time.perf_counter()
                info = load_adapter(fresh, path, adapter_name="a")
                loads.append(time.perf_counter() - start)
            base_ms = step_ms(unet, batch, args.repeat)  # again, next to this row's timings
            unfused = step_ms(fresh, batch, args.repeat)
            fresh.fuse_lora()  # type: ignore[operator]
            fused = step_ms(fresh, batch, args.repeat)
            peak = subprocess.run(
                [sys.executable, __file__, "--unet", args.unet, "--child-peak", str(path)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.split()[-1]
            table.add_row(
                row,
                f"{info.parameters:,}",
                f"{1000 * statistics.median(loads):.1f}",
                f"{float(peak):.1f}",
                f"{unfused / base_ms:.2f}",
                f"{fused / base_ms:.2f}",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
