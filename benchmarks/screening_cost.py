"""What screening a user's adapter costs at load, on the embedded model and an SD 1.5-sized UNet.

    python benchmarks/screening_cost.py [--repeats 3] [--results PATH | --no-results]

The screen (:func:`safety_lora.steering.screening.screen`) of one user LoRA (rank 8 on every
attention projection) against the demo policy's concepts (its closed-form red entry: the
concept's templates, and probes that do not name it), with each measure, on the embedded
concept-world model and on a randomly initialised UNet with SD 1.5's shape (860M parameters,
768-wide cross-attention; CLIP ViT-L's text encoder shape, on the embedded tokenizer's
vocabulary). Weights do not change the cost, so random ones stand in for SD 1.5's, which
cannot be downloaded here. Per model and measure: the UNet rows the screen runs, its wall time
(median over ``--repeats``), and, as the baseline measured in the same loop (interleaved, so
the machine's load cancels out), one UNet row at the denoiser measure's latent size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _report import Report, add_arguments, first_paragraph
from rich.console import Console

from safety_lora.conditioning import PromptBank
from safety_lora.demo import demo_policy
from safety_lora.models import concept_world
from safety_lora.steering.screening import policy_probes, screen, screen_measure, screen_rows

NAME = "screening_cost"
USER = "user"


def sd15_sized() -> Any:
    """A StableDiffusionPipeline with SD 1.5's UNet and text-encoder shapes, random weights
    (the embedded model's tokenizer, VAE and scheduler: the screen uses neither VAE nor
    scheduler)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    small = concept_world()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(small.tokenizer),
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
            )
        )
    pipe = StableDiffusionPipeline(
        vae=small.vae,
        text_encoder=text.eval(),
        tokenizer=small.tokenizer,
        unet=unet.eval(),
        scheduler=small.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def add_user_lora(pipe: Any) -> None:
    """A rank-8 LoRA on every attention projection, with non-zero up weights (a trained one's
    cost)."""
    from peft import LoraConfig

    pipe.unet.add_adapter(
        LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
        adapter_name=USER,
    )
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if f"lora_B.{USER}" in name:
                param.normal_(std=1e-3)


def one_row(pipe: Any, size: int) -> float:
    """Seconds for one UNet row at the screen's latent size (the unit of the screen's cost)."""
    bank = PromptBank.encode(pipe, ["a circle"], latent_size=size)
    x = torch.randn(1, int(pipe.unet.config.in_channels), size, size)
    began = time.perf_counter()
    with torch.no_grad():
        pipe.unet(x, torch.tensor([500]), **bank.unet_kwargs(bank.index(["a circle"])))
    return time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=first_paragraph(__doc__))
    parser.add_argument("--repeats", type=int, default=3, help="timed screens per model")
    add_arguments(parser, NAME)
    args = parser.parse_args(argv)
    report = Report(NAME, "What screening a user adapter costs", first_paragraph(__doc__))
    console = Console(width=150)
    probes = policy_probes(demo_policy().steering)
    table = report.table(
        "Screening one user LoRA against the demo policy's concepts",
        ["model", "UNet parameters", "measure", "UNet rows", "screen", "one UNet row", "ratio"],
    )
    for label, build in (("embedded concept world", concept_world), ("SD 1.5-sized", sd15_sized)):
        console.print(f"[bold]{label}[/]: building")
        pipe = build()
        add_user_lora(pipe)
        size = min(16, int(pipe.unet.config.sample_size))
        params = sum(p.numel() for n, p in pipe.unet.named_parameters() if "lora_" not in n)
        for measure in ("cross_attention", "denoiser"):
            screen(pipe, USER, probes, measure=measure)  # warm-up: first-call allocations
            screens, rows = [], []
            for _ in range(args.repeats):
                screens.append(screen(pipe, USER, probes, measure=measure).seconds)
                rows.append(one_row(pipe, size))
            auto = " (auto)" if screen_measure(pipe.unet) == measure else ""
            seconds, row = statistics.median(screens), statistics.median(rows)
            table.add_row(
                label,
                f"{params / 1e6:.0f}M",
                measure + auto,
                "0" if measure == "cross_attention" else str(screen_rows(probes)),
                f"{seconds:.3f} s",
                f"{row:.3f} s ({size}x{size})",
                f"{seconds / row:.2f}x",
            )
        del pipe
    for printed in report.tables:
        console.print(printed.rich())
    report.save(args)


if __name__ == "__main__":
    main()
