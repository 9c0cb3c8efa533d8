"""Train the concept-world model on CPU: the VAE first, then UNet + text encoder.

``python -m safety_lora.workbench.concept_world.train --out DIR [--steps N] [--seed S] [--world V]
[--resume]``

Fixed seed, rich progress bars, resumable safetensors checkpoints (weights, EMA weights and
optimizer state; no pickle). Every step draws its batch and noise from a generator seeded by
``(seed, stage, step)``, so a resumed run continues exactly as an uninterrupted one. The
denoiser's learning rate is constant after warmup (quality comes from its EMA weights), so
a run of N steps is a prefix of any longer run: ``--resume --steps N`` on a longer run's
step-N checkpoint exports exactly what ``--steps N`` from scratch would.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from safety_lora.concept_world import model as cw_model
from safety_lora.concept_world.world import VERSIONS, WORDS, WORDS_2, generate

if TYPE_CHECKING:
    import torch
    from diffusers import DDPMScheduler
    from rich.progress import Progress

CFG_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0
EMA_DECAY = 0.998
CHECKPOINT_EVERY = 100
#: Step and sample budgets per world version (the shipped models were trained with these).
WORLD_DEFAULTS = {
    "steps": {1: 2500, 2: 4000},
    "vae_steps": {1: 700, 2: 1500},
    "samples": {1: 30000, 2: 60000},
}


def _generator(seed: int, stage: int, step: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + step)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], str]:
    """Optimizer state as flat tensors plus its param groups as JSON (no pickle)."""
    import torch

    state = opt.state_dict()
    tensors = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optim.{index}.{key}"] = tensor.contiguous()
    return tensors, json.dumps(state["param_groups"])


def _load_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: str
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    opt.load_state_dict({"state": state, "param_groups": json.loads(groups)})


def _save_checkpoint(
    path: Path,
    *,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer,
    step: int,
    extra: dict[str, str] | None = None,
) -> None:
    from safetensors.torch import save_file

    tensors = {
        f"{prefix}.{k}": v.detach().contiguous()
        for prefix, module in modules.items()
        for k, v in module.state_dict().items()
    }
    optim, groups = _optimizer_tensors(opt)
    tensors.update(optim)
    meta = {"step": str(step), "param_groups": groups, **(extra or {})}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def _load_checkpoint(
    path: Path, *, modules: dict[str, torch.nn.Module], opt: torch.optim.Optimizer
) -> tuple[int, dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        module.load_state_dict(sub)
    _load_optimizer(opt, tensors, meta["param_groups"])
    return int(meta["step"]), meta


def _lr(step: int, total: int | None, peak: float, warmup: int = 100) -> float:
    """Linear warmup, then cosine decay to 0 at ``total`` (or constant where ``total`` is None)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if total is None:
        return peak
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@contextmanager
def _progress() -> Iterator[Progress]:
    from safety_lora.progress import progress_bar

    with progress_bar("loss {task.fields[loss]:.4f}") as progress:
        yield progress


def _dataset(n: int, seed: int, version: int) -> tuple[np.ndarray, list[str]]:
    samples = generate(n, seed=seed, version=version)
    images = np.stack([np.asarray(s.image) for s in samples]).transpose(0, 3, 1, 2)
    return images, [s.caption for s in samples]


def _to_unit(images: np.ndarray) -> torch.Tensor:
    import torch

    return torch.from_numpy(images).float() / 127.5 - 1.0


def train_vae(
    vae: torch.nn.Module, images: np.ndarray, *, steps: int, seed: int, ckpt: Path, resume: bool
) -> None:
    """Reconstruction (MSE) plus a tiny KL term, batch 64, AdamW with cosine decay."""
    import torch

    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    start = 0
    if resume and ckpt.exists():
        start, _ = _load_checkpoint(ckpt, modules={"vae": vae}, opt=opt)
        if start > steps:
            raise ValueError(f"{ckpt}: checkpoint is at step {start}, beyond --vae-steps {steps}")
    data = _to_unit(images)
    vae.train()
    with _progress() as progress:
        task = progress.add_task("VAE", total=steps, completed=start, loss=0.0)
        for step in range(start, steps):
            g = _generator(seed, 1, step)
            x = data[torch.randint(0, len(data), (64,), generator=g)]
            for group in opt.param_groups:
                group["lr"] = _lr(step, steps, 2e-3)
            posterior = vae.encode(x).latent_dist  # type: ignore[operator]
            z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
            recon = vae.decode(z).sample  # type: ignore[operator]
            loss = (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            progress.update(task, advance=1, loss=loss.item())
            if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
                _save_checkpoint(ckpt, modules={"vae": vae}, opt=opt, step=step + 1)
    vae.eval()


def encode_latents(vae: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """Posterior means of every image, scaled to unit std; sets the VAE's ``scaling_factor``."""
    import torch

    data = _to_unit(images)
    with torch.no_grad():
        means = [vae.encode(data[i : i + 512]).latent_dist.mean for i in range(0, len(data), 512)]  # type: ignore[operator]
    latents = torch.cat(means)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)  # type: ignore[operator]
    return latents * scale


def _noise_schedule() -> DDPMScheduler:
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        **{
            k: v
            for k, v in cw_model.build_scheduler().config.items()
            if k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
        }
    )


def denoising_loss(
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    latents: torch.Tensor,
    ids: torch.Tensor,
    *,
    noise: torch.Tensor,
    t: torch.Tensor,
    schedule: DDPMScheduler | None = None,
) -> torch.Tensor:
    """The denoiser's objective on one batch: min-SNR-weighted epsilon MSE at timesteps ``t``."""
    schedule = schedule or _noise_schedule()
    alphas = schedule.alphas_cumprod
    zt = schedule.add_noise(latents, noise, t)
    pred = unet(zt, t, text_encoder(ids)[0]).sample  # type: ignore[operator]
    snr = alphas[t] / (1 - alphas[t])
    weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
    loss: torch.Tensor = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
    return loss


def train_denoiser(
    *,
    unet: torch.nn.Module,
    text_encoder: torch.nn.Module,
    ids: torch.Tensor,
    empty_ids: torch.Tensor,
    latents: torch.Tensor,
    steps: int,
    seed: int,
    ckpt: Path,
    resume: bool,
    batch_size: int = 64,
    warmup: int = 100,
) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Epsilon objective with min-SNR weighting and CFG caption dropout; returns EMA models.

    ``batch_size`` and ``warmup`` (learning-rate warmup steps) default to the shipped models'
    settings; tests train with smaller ones.
    """
    import copy

    import torch

    noise_schedule = _noise_schedule()
    alphas = noise_schedule.alphas_cumprod
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    modules = {
        "unet": unet,
        "text_encoder": text_encoder,
        "ema_unet": ema_unet,
        "ema_text": ema_text,
    }
    start = 0
    if resume and ckpt.exists():
        start, _ = _load_checkpoint(ckpt, modules=modules, opt=opt)
        if start > steps:
            raise ValueError(f"{ckpt}: checkpoint is at step {start}, beyond --steps {steps}")
    unet.train()
    text_encoder.train()
    pairs = [(ema_unet, unet), (ema_text, text_encoder)]
    with _progress() as progress:
        task = progress.add_task("UNet + text", total=steps, completed=start, loss=0.0)
        for step in range(start, steps):
            g = _generator(seed, 2, step)
            idx = torch.randint(0, len(latents), (batch_size,), generator=g)
            z0, cond = latents[idx], ids[idx].clone()
            cond[torch.rand(batch_size, generator=g) < CFG_DROPOUT] = empty_ids
            noise = torch.randn(z0.shape, generator=g)
            t = torch.randint(0, len(alphas), (batch_size,), generator=g)
            for group in opt.param_groups:
                group["lr"] = _lr(step, None, 1e-3, warmup)
            loss = denoising_loss(
                unet, text_encoder, z0, cond, noise=noise, t=t, schedule=noise_schedule
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(EMA_DECAY, (1 + step) / (10 + step))
            with torch.no_grad():
                for ema, live in pairs:
                    for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                        pe.lerp_(pl, 1 - decay)
            progress.update(task, advance=1, loss=loss.item())
            if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
                _save_checkpoint(ckpt, modules=modules, opt=opt, step=step + 1)
    return ema_unet, ema_text


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, train both stages, save the pipeline folder to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m safety_lora.workbench.concept_world.train")
    parser.add_argument("--out", type=Path, required=True, help="pipeline folder to write")
    parser.add_argument(
        "--steps", type=int, help="UNet + text encoder steps (default: world 1 2500, world 2 4000)"
    )
    parser.add_argument("--vae-steps", type=int, help="default: world 1 700, world 2 1500")
    parser.add_argument(
        "--samples", type=int, help="world samples to train on (default: 30000, world 2 60000)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--world", type=int, choices=VERSIONS, default=2, help="concept-world version to draw"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints")
    parser.add_argument("--keep-checkpoints", action="store_true")
    args = parser.parse_args(argv)
    for name, defaults in WORLD_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[args.world])
    for name in ("steps", "vae_steps", "samples", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    began = time.monotonic()
    ckpt_dir = args.out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    images, captions = _dataset(args.samples, args.seed, args.world)

    vae = cw_model.build_vae()
    train_vae(
        vae,
        images,
        steps=args.vae_steps,
        seed=args.seed,
        ckpt=ckpt_dir / "vae.safetensors",
        resume=args.resume,
    )
    latents = encode_latents(vae, images)

    tokenizer = cw_model.build_tokenizer(WORDS if args.world == 1 else WORDS_2)

    def tokenize(texts: list[str]) -> torch.Tensor:
        ids: torch.Tensor = tokenizer(
            texts,
            padding="max_length",
            max_length=cw_model.MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids

    unet = cw_model.build_unet(args.world)
    text_encoder = cw_model.build_text_encoder(vocab_size=len(tokenizer))
    ema_unet, ema_text = train_denoiser(
        unet=unet,
        text_encoder=text_encoder,
        ids=tokenize(captions),
        empty_ids=tokenize([""])[0],
        latents=latents,
        steps=args.steps,
        seed=args.seed,
        ckpt=ckpt_dir / "denoiser.safetensors",
        resume=args.resume,
    )
    pipe = cw_model.assemble(tokenizer=tokenizer, text_encoder=ema_text, vae=vae, unet=ema_unet)
    pipe.save_pretrained(args.out, safe_serialization=True)
    if not args.keep_checkpoints:
        shutil.rmtree(ckpt_dir)
    print(f"saved {args.out} in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
