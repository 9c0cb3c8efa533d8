"""Adapter formats: per-step UNet cost, unfused and fused, per family, against the base UNet.

One adapter per family on an SD 1.5-sized UNet built in code (its published block structure
and widths, random weights, no download; ``--unet concept-world`` or ``tiny`` for the small
ones), steered the way the product steers (``Steering``, dynamic and fused mode). LoHa, LoKr,
full and DoRA files are written by the ``lycoris-lora`` package; the PEFT and kohya LoRA files
are our conversions of its LoCon. Each ratio is the median over ``--pairs`` interleaved (ABAB)
pairs of a base forward and a steered forward, so that load on the machine cancels, with a 95%
bootstrap interval over the pairs. Fused mode merges the adapters and takes peft's wrappers out
of the forward path ("wrappers" column: how many are left), so fused costs what the base does
(bar: <= 1.01x). ``--memory`` adds the peak RSS growth of loading each file, measured in a
fresh child process.

    .venv/bin/python benchmarks/adapter_formats.py [--unet sd15] [--pairs 5] [--rank 8]
        [--results PATH | --no-results]
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

import numpy as np
import psutil
import torch
from _report import Report, add_arguments, first_paragraph
from rich.console import Console
from rich.progress import track

from safety_lora.adapters import convert, load_adapter
from safety_lora.policies.schema import SteeringPolicy
from safety_lora.steering import Steering
from safety_lora.testing import tiny_pipeline

NAME = "adapter_formats"
ROWS: dict[str, dict[str, Any]] = {
    "lora (peft)": {"algo": "locon", "to": "peft"},
    "lora (kohya)": {"algo": "locon", "to": "kohya"},
    "dora (kohya)": {"algo": "locon", "dora_wd": True},
    "loha": {"algo": "loha"},
    "lokr": {"algo": "lokr"},
    "full": {"algo": "full"},
}


def base_unet(kind: str, latent: int) -> tuple[torch.nn.Module, str]:
    """The UNet to measure on, and its description."""
    if kind == "sd15":
        from diffusers import UNet2DConditionModel

        from safety_lora.adapters.names import SD15_UNET

        torch.manual_seed(0)
        unet = UNet2DConditionModel(**SD15_UNET, sample_size=latent)  # type: ignore[no-untyped-call]
        n = sum(p.numel() for p in unet.parameters()) / 1e6
        return unet.eval(), f"SD 1.5-sized UNet ({n:.0f} M parameters, random), {latent}² latent"
    if kind == "concept-world":
        from safety_lora.models import concept_world

        try:
            return concept_world().unet.eval(), "concept-world UNet"
        except FileNotFoundError:
            pass
    from safety_lora.testing import tiny_pipeline

    return tiny_pipeline("sd").unet.eval(), "tiny SD UNet"


def inputs(unet: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A latent, a timestep and text states matching the UNet's config, device and dtype."""
    g = torch.Generator().manual_seed(0)
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    sample = torch.randn(1, cfg.in_channels, size, size, generator=g)
    text = torch.randn(1, 77, cfg.cross_attention_dim, generator=g)
    to = {"device": unet.device, "dtype": unet.dtype}
    return sample.to(**to), torch.tensor([500], device=unet.device), text.to(**to)


def write_adapter(unet: torch.nn.Module, folder: Path, row: str, rank: int) -> Path:
    """The row's adapter file: LyCORIS applies a network to ``unet``, saves it, restores it."""
    from lycoris import create_lycoris

    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    spec = dict(ROWS[row])
    to = spec.pop("to", None)
    net = create_lycoris(unet, 1.0, linear_dim=rank, linear_alpha=rank / 2, **spec)
    net.apply_to()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "dora_scale" not in name:
                p.add_(
                    torch.randn(p.shape, generator=g) * (0.001 if spec["algo"] == "full" else 0.05)
                )
    path = folder / f"{row.split()[0]}.safetensors"
    net.save_weights(str(path), None, {})
    net.restore()
    if to is None:
        return path
    out = folder / f"{row.split()[0]}-{to}.safetensors"
    convert(path, out, to=to, unet=unet)
    return out


def forward_s(unet: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> float:
    """One UNet forward, in seconds (synchronised on CUDA)."""
    start = time.perf_counter()
    with torch.no_grad():
        unet(*batch[:2], encoder_hidden_states=batch[2])
    if batch[0].is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ratio(
    base: torch.nn.Module, other: torch.nn.Module, batch: tuple[torch.Tensor, ...], pairs: int
) -> tuple[float, tuple[float, float], float]:
    """Median of ``other / base`` over interleaved pairs (ABAB), its 95% bootstrap interval,
    and the base's median seconds."""
    forward_s(base, batch), forward_s(other, batch)  # warm-up
    times = np.array([(forward_s(base, batch), forward_s(other, batch)) for _ in range(pairs)])
    ratios = times[:, 1] / times[:, 0]
    draws = np.random.default_rng(0).choice(ratios, (2000, len(ratios)))
    low, high = np.quantile(np.median(draws, axis=1), [0.025, 0.975])
    return float(np.median(ratios)), (float(low), float(high)), float(np.median(times[:, 0]))


def steered(base: torch.nn.Module, path: Path, mode: str) -> tuple[Steering, torch.nn.Module]:
    """A copy of ``base`` steered by ``path`` as the product does it, in ``mode``."""
    pipe = tiny_pipeline()
    pipe.unet = copy.deepcopy(base)
    adapter = {"path": path, "categories": ["sexual"]}
    policy = SteeringPolicy.model_validate({"mode": mode, "adapters": [adapter]})
    return Steering(pipe, policy), pipe.unet


def wrappers(unet: torch.nn.Module) -> int:
    """How many peft adapter wrappers ``unet``'s forward runs through."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in unet.modules())


def child_peak(kind: str, latent: int, path: Path) -> None:
    """In a fresh process: print the peak RSS growth (MiB) while loading ``path``.

    RSS is sampled every 0.2 ms by a thread (the process' max RSS is set by imports).
    """
    unet, _ = base_unet(kind, latent)
    proc = psutil.Process()
    gc.collect()
    before = peak = proc.memory_info().rss
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
    print((max(peak, proc.memory_info().rss) - before) / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unet", choices=["sd15", "concept-world", "tiny"], default="sd15")
    parser.add_argument("--latent", type=int, default=32, help="latent side (sd15 only)")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory", action="store_true", help="also measure load peak RSS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--child-peak", type=Path, help=argparse.SUPPRESS)
    add_arguments(parser, NAME)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_peak:
        child_peak(args.unet, args.latent, args.child_peak)
        return
    report = Report(NAME, "Adapter formats: per-step cost", first_paragraph(__doc__))
    base, desc = base_unet(args.unet, args.latent)
    base.to(args.device, getattr(torch, args.dtype))
    batch = inputs(base)
    where = f"{args.threads} thread(s)" if args.device == "cpu" else args.device
    title = f"Adapter formats on the {desc}, rank {args.rank}, {args.dtype}, {where}"
    columns = ["adapter", "params", "load s", "unfused x", "fused x", "wrappers", "fused max |Δ|"]
    table = report.table(title, columns + (["load peak MiB"] if args.memory else []))
    table.note(f"median of {args.pairs} interleaved base/steered pairs [95% bootstrap interval]")
    base_ms: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in track(ROWS, description="families", transient=True):
            path = write_adapter(base, Path(tmp), row, args.rank)
            target = copy.deepcopy(base)
            start = time.perf_counter()
            info = load_adapter(target, path, adapter_name="a")
            load_s = time.perf_counter() - start
            del target
            cells = [row, f"{info.parameters:,}", f"{load_s:.2f}"]
            outputs = []
            for mode in ("dynamic", "fused"):
                steering, unet = steered(base, path, mode)
                x, (low, high), base_s = ratio(base, unet, batch, args.pairs)
                with torch.no_grad():
                    outputs.append(unet(*batch[:2], encoder_hidden_states=batch[2]).sample)
                cells.append(f"{x:.3f} [{low:.3f}, {high:.3f}]")
                base_ms.append(1000 * base_s)
                left = wrappers(unet)
                del steering, unet
                gc.collect()
            cells += [str(left), f"{(outputs[1] - outputs[0]).abs().max().item():.1e}"]
            if args.memory:
                cmd = [sys.executable, __file__, "--unet", args.unet, "--latent", str(args.latent)]
                out = subprocess.run(
                    [*cmd, "--child-peak", str(path)], capture_output=True, text=True, check=True
                )
                cells.append(f"{float(out.stdout.split()[-1]):.0f}")
            table.add_row(*cells)
    cost = f"1.000 ({statistics.median(base_ms):.0f} ms)"
    memory = ["-"] if args.memory else []
    table.add_row("base", "-", "-", cost, "1.000", str(wrappers(base)), "-", *memory)
    Console(width=150).print(table.rich())
    report.save(args)


if __name__ == "__main__":
    main()
