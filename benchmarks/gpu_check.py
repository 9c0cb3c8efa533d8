"""The dtype/device checks and the adapter overhead table on CUDA (prints "no GPU" without one).

For float16 and bfloat16: a LoRA steering a tiny SD pipeline on the GPU through SafePipeline
is bit-identical to the base at strength 0, changes the images at strength 1, fused agrees
with unfused, works under ``enable_model_cpu_offload`` and with a ``torch.compile``d UNet;
then ``benchmarks/adapter_formats.py`` runs on the GPU in float16.

    .venv/bin/python benchmarks/gpu_check.py [--pairs 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_lora_file, tiny_pipeline


def policy(lora: Path, scale: float, mode: str = "dynamic") -> Policy:
    adapter = {"path": str(lora), "categories": ["sexual"], "scale": scale}
    classifiers = [{"kind": "static", "scores": {"sexual": 0.0}}]
    steering = {"mode": mode, "adapters": [adapter]}
    return Policy.model_validate({"classifiers": classifiers, "steering": steering})


def images(pipe: Any) -> np.ndarray:
    g = torch.Generator("cuda").manual_seed(0)
    out = pipe("a cat", num_inference_steps=4, generator=g, output_type="np")
    return np.asarray(out.images)


def check(dtype: torch.dtype, lora: Path) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) rows for one dtype."""

    def pipe() -> Any:
        return tiny_pipeline().to("cuda", dtype)

    base = images(pipe())
    rows = []
    off = images(SafePipeline(pipe(), policy(lora, 0.0)))
    rows.append(("strength 0 == base", bool(np.array_equal(off, base)), ""))
    on = images(SafePipeline(pipe(), policy(lora, 1.0)))
    change = float(np.abs(on - base).max())
    rows.append(("strength 1 changes images", change > 1e-3, f"max |Δ| {change:.3g}"))
    fused = images(SafePipeline(pipe(), policy(lora, 1.0, "fused")))
    gap = float(np.abs(fused - on).max())
    rows.append(("fused == unfused", gap <= 2e-2, f"max |Δ| {gap:.3g}"))
    offloaded = tiny_pipeline().to(dtype=dtype)
    offloaded.enable_model_cpu_offload()
    gap = float(np.abs(images(SafePipeline(offloaded, policy(lora, 1.0))) - on).max())
    rows.append(("enable_model_cpu_offload", gap <= 2e-2, f"max |Δ| {gap:.3g}"))
    safe = SafePipeline(pipe(), policy(lora, 1.0))
    safe.pipe.unet = torch.compile(safe.pipe.unet)
    gap = float(np.abs(images(safe) - on).max())
    rows.append(("torch.compile'd UNet", gap <= 2e-2, f"max |Δ| {gap:.3g}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no GPU: nothing to check (torch.cuda.is_available() is False)")
        return
    print(f"GPU: {torch.cuda.get_device_name()}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        lora = tiny_lora_file(tiny_pipeline(), Path(tmp) / "lora.safetensors")
        for dtype in (torch.float16, torch.bfloat16):
            for name, passed, detail in check(dtype, lora):
                failed += not passed
                print(f"{'✓' if passed else '✗'} {dtype!s:<15} {name:<28} {detail}")
    here = Path(__file__).parent / "adapter_formats.py"
    cmd = [sys.executable, str(here), "--device", "cuda", "--dtype", "float16"]
    subprocess.run([*cmd, "--pairs", str(args.pairs), "--latent", "64"], check=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
