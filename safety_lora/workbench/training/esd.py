"""ESD concept erasure with a LoRA, LoHa or LoKr adapter on a frozen diffusers denoiser
(a UNet, or an SD3/Flux transformer: :mod:`safety_lora.workbench.training.denoiser`).

Objective (Gandikota et al., "Erasing Concepts from Diffusion Models", 2023)::

  eps_adapted(x_t, c, t) -> eps_base(x_t, a, t) - eta * (eps_base(x_t, c, t) - eps_base(x_t, a, t))

``eps_base`` is the UNet with the adapter disabled, ``c`` a concept prompt, ``a`` its anchor
prompt (empty prompt = plain ESD; see :mod:`safety_lora.workbench.training.config`). Preservation:
for retain prompts ``p``, ``eps_adapted(x_t, p, t) -> eps_base(x_t, p, t)``, weighted by
``preserve_weight``. The loss is the mean squared error of both.

Where ``x_t`` comes from, per training step (as the paper: from the model being edited):

1. one stop index ``k`` is drawn uniformly from ``0 .. ddim_steps - 1`` for the batch;
2. from Gaussian noise, ``k`` DDIM steps (eta 0, "trailing" spacing over the base's noise
   schedule, no clipping; transformers: flow-matching Euler steps) are run with the *adapted*
   model conditioned on each row's own prompt (concept or retain prompt), with
   classifier-free guidance ``guidance_scale``;
3. ``x_t`` is the result and ``t`` the timestep of DDIM step ``k``, i.e. the noise level
   ``x_t`` is actually at. (The paper's code evaluates the DDPM timestep ``~ 1000 k / 50``,
   the reverse of the level reached; we use the consistent one.)

Validation uses fixed ``x_t`` from the *base* model at ``val_draws`` stop indices spread
evenly over the schedule, drawn from a noise stream training never sees, so its loss is
comparable across steps; its prompts are the held-out ones when ``val_fraction`` > 0, else
the training prompts.
Every step draws from a ``torch.Generator`` seeded by ``(seed, step)``: a resumed run
continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from safety_lora.adapters.fingerprint import base_fingerprint
from safety_lora.adapters.loading import (
    add_trainable_adapter,
    set_adapters_enabled,
    unload_adapters,
)
from safety_lora.conditioning import PromptBank
from safety_lora.loading import load_pipeline
from safety_lora.seeds import hashed_seed
from safety_lora.workbench.training.adversarial import Adversary
from safety_lora.workbench.training.config import TrainConfig
from safety_lora.workbench.training.denoiser import Denoiser, Sampler
from safety_lora.workbench.training.io import (
    load_checkpoint,
    save_adapter_file,
    save_checkpoint,
)
from safety_lora.workbench.training.targets import peft_config, target_modules

__all__ = ["ADAPTER_NAME", "EsdTrainer", "TrainResult", "esd_target", "train_adapter"]

#: The adapter's name on the UNet while training.
ADAPTER_NAME = "safety_lora_esd"


def esd_target(eps_concept: torch.Tensor, eps_anchor: torch.Tensor, eta: float) -> torch.Tensor:
    """``eps_anchor - eta * (eps_concept - eps_anchor)``: the anchor, pushed away from ``c``."""
    return eps_anchor - eta * (eps_concept - eps_anchor)


@dataclass
class TrainResult:
    """What a run produced: the adapter file, its loss history and cost.

    ``losses`` holds every step's training loss (of resumed runs too), ``val_losses`` the
    ``(step, loss)`` evaluations; ``best_step`` is the step whose adapter was saved.
    ``seconds``/``seconds_per_step`` time this process's training loop (validation included).
    """

    path: Path
    steps: int
    best_step: int
    stopped_early: bool
    losses: list[float]
    val_losses: list[tuple[int, float]]
    val_held_out: bool
    trainable_parameters: int
    target_modules: list[str]
    seconds: float
    seconds_per_step: float
    metadata: dict[str, str] = field(repr=False)


def _generator(seed: int, stream: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(hashed_seed("safety-lora-esd", seed, stream, step))


def _split(
    items: Sequence[Any], fraction: float, seed: int, stream: str
) -> tuple[list[Any], list[Any]]:
    """(train, held out): a seeded ``fraction`` of ``items`` is held out, keeping >= 1 to train."""
    order = torch.randperm(len(items), generator=_generator(seed, stream, 0)).tolist()
    held = min(max(1, round(len(items) * fraction)) if fraction else 0, max(0, len(items) - 1))
    return [items[i] for i in sorted(order[held:])], [items[i] for i in sorted(order[:held])]


class EsdTrainer:
    """Holds one run's state: the UNet with its adapter, prompts, optimizer and history.

    Construction injects the adapter (zero-initialised, so the adapted model starts as the
    base) into the denoiser (``pipe.unet`` or ``pipe.transformer``; :mod:`.denoiser`), which
    must carry no other adapter; :meth:`close` removes it and restores the denoiser's
    modules, ``requires_grad`` flags and train/eval mode. ``self.unet`` is the denoiser.
    """

    def __init__(self, pipe: Any, config: TrainConfig) -> None:
        self.denoiser = Denoiser.of(pipe, config.guidance_scale)
        self.pipe, self.config, self.unet = pipe, config, self.denoiser.module
        if config.adversarial and self.denoiser.family != "unet":
            raise ValueError(
                "adversarial ESD training supports UNet pipelines (SD), not SD3/Flux/PixArt"
            )
        self.scheduler = Sampler(pipe, self.denoiser, config.ddim_steps)
        # Before the adapter goes in: an unsupported pipeline fails with the UNet untouched.
        self.adversary = Adversary(self, config.adversarial) if config.adversarial else None
        present = sorted(getattr(self.unet, "peft_config", None) or {})
        if present:
            raise ValueError(
                f"the denoiser carries adapters {present}; ESD trains against the bare model "
                f"(fuse them into the weights first, or train on a fresh pipeline)"
            )
        self.device = self.unet.device
        self.fingerprint = base_fingerprint(self.unet)
        self.targets = target_modules(self.unet, config.method, config.target_modules)
        self._grad = {n: p.requires_grad for n, p in self.unet.named_parameters()}
        self._training = self.unet.training
        self.unet.requires_grad_(False)
        self.unet.eval()
        kind_config = peft_config(config.adapter, config.rank, config.lora_alpha, self.targets)
        with torch.random.fork_rng(devices=[]):  # peft draws the initial factors globally
            torch.manual_seed(_generator(config.seed, "init", 0).initial_seed())
            add_trainable_adapter(self.unet, kind_config, ADAPTER_NAME)
        self.params = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=config.lr)

        pairs = [pair for erasure in config.erase for pair in erasure.prompt_pairs()]
        self.pairs, val_pairs = _split(pairs, config.val_fraction, config.seed, "pairs")
        self.keep, val_keep = _split(config.preserve, config.val_fraction, config.seed, "keep")
        self.val_held_out = bool(val_pairs)
        self.val_pairs = val_pairs or self.pairs
        self.val_keep = val_keep or self.keep
        self.latent_size = self.denoiser.side
        prompts = ["", *(p for pair in pairs for p in pair), *config.preserve]
        self.bank = PromptBank.encode(pipe, prompts, latent_size=self.latent_size)
        self.empty = self.bank.index([""])

        self.step = 0
        self.losses: list[float] = []
        self.val_losses: list[tuple[int, float]] = []
        self.best: tuple[int, float, dict[str, torch.Tensor]] | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # -- model calls -----------------------------------------------------------------------

    @contextmanager
    def base(self) -> Iterator[None]:
        """The frozen base model: the adapter disabled inside the block."""
        set_adapters_enabled(self.unet, False)
        try:
            yield
        finally:
            set_adapters_enabled(self.unet, True)

    def eps(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The denoiser's prediction for latents ``x`` at timesteps ``t`` under prompt ``rows``."""
        return self.denoiser(x, t, self.bank, rows)

    def eps_states(self, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction under text states ``hidden`` (one text encoder: SD)."""
        if self.bank.pooled is not None:
            raise ValueError("adversarial ESD training supports one text encoder (SD), not SDXL")
        steps = t.to(self.device).expand(len(x)) if t.dim() == 0 else t.to(self.device)
        return self.unet(x, steps, encoder_hidden_states=hidden).sample  # type: ignore[no-any-return]

    def _guided(self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        scale = self.config.guidance_scale
        if scale == 1.0 or self.denoiser.distilled_guidance:
            return self.eps(x, t, rows)
        uncond, cond = self.eps(
            torch.cat([x, x]), t, torch.cat([self.empty.expand(len(rows)), rows])
        ).chunk(2)
        return uncond + scale * (cond - uncond)

    @torch.no_grad()
    def partial_denoise(
        self, rows: torch.Tensor, stop: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t`` after ``stop`` guided sampling steps from noise under ``rows``; and its ``t``."""
        x = torch.randn((len(rows), *self.denoiser.shape), generator=generator).to(self.device)
        x = x * self.scheduler.init_noise_sigma
        timesteps = self.scheduler.timesteps
        for t in timesteps[:stop]:
            x = self.scheduler.step(self._guided(x, t, rows), t, x)
        return x, timesteps[stop]

    # -- loss ------------------------------------------------------------------------------

    def _rows(
        self, pairs: Sequence[tuple[str, str]], keep: Sequence[str]
    ) -> tuple[torch.Tensor, ...]:
        concept = self.bank.index([c for c, _ in pairs])
        anchor = self.bank.index([a for _, a in pairs])
        return concept, anchor, self.bank.index(list(keep))

    @torch.no_grad()
    def targets_for(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        concept: torch.Tensor,
        anchor: torch.Tensor,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """Base-model targets: ESD targets for the first ``len(concept)`` rows, then retain."""
        n = len(concept)
        with self.base():
            base = self.eps(torch.cat([x[:n], x[:n], x[n:]]), t, torch.cat([concept, anchor, keep]))
        eps_c, eps_a, eps_keep = base[:n], base[n : 2 * n], base[2 * n :]
        return torch.cat([esd_target(eps_c, eps_a, self.config.eta), eps_keep])

    def loss(
        self, x: torch.Tensor, t: torch.Tensor, rows: torch.Tensor, target: torch.Tensor, n: int
    ) -> torch.Tensor:
        """ESD MSE on the first ``n`` rows plus ``preserve_weight`` x retain MSE on the rest."""
        pred = self.eps(x, t, rows)
        loss = (pred[:n] - target[:n]).pow(2).mean()
        if len(rows) > n:
            keep = (pred[n:] - target[n:]).pow(2).mean()
            loss = loss + self.config.preserve_weight * keep
        return loss

    def train_step(self) -> float:
        """One optimisation step (batch, ``x_t`` and ``t`` drawn from the step's generator)."""
        g = _generator(self.config.seed, "train", self.step)
        batch = self.config.batch
        pick = torch.randint(len(self.pairs), (batch,), generator=g).tolist()
        keep_pick = (
            torch.randint(len(self.keep), (batch,), generator=g).tolist() if self.keep else []
        )
        concept, anchor, keep = self._rows(
            [self.pairs[i] for i in pick], [self.keep[i] for i in keep_pick]
        )
        stop = int(torch.randint(self.config.ddim_steps, (1,), generator=g))
        rows = torch.cat([concept, keep])
        x, t = self.partial_denoise(rows, stop, g)
        target = self.targets_for(x, t, concept, anchor, keep)
        loss = self.loss(x, t, rows, target, len(concept))
        if self.adversary is not None:
            n = len(concept)
            prompts = [self.pairs[i][0] for i in pick]
            extra = self.adversary.loss(self.step, prompts, x[:n], t, target[:n], g)
            loss = loss if extra is None else loss + extra
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.step += 1
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    # -- validation ------------------------------------------------------------------------

    def _validation_batch(
        self,
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Fixed (x_t, t, rows, target) per draw, from the base model at spread-out stops."""
        if not self._val:
            concept, anchor, keep = self._rows(self.val_pairs, self.val_keep)
            rows = torch.cat([concept, keep])
            draws = self.config.val_draws
            with self.base():
                for d in range(draws):
                    stop = min(
                        self.config.ddim_steps - 1,
                        (2 * d + 1) * self.config.ddim_steps // (2 * draws),
                    )
                    x, t = self.partial_denoise(rows, stop, _generator(self.config.seed, "val", d))
                    self._val.append((x, t, rows, self.targets_for(x, t, concept, anchor, keep)))
        return self._val

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss of the current adapter on the fixed validation batch."""
        n = len(self.val_pairs)
        batch = self._validation_batch()
        return sum(float(self.loss(x, t, r, y, n)) for x, t, r, y in batch) / len(batch)

    def evaluate(self) -> float:
        """Record the validation loss; keep the best adapter; count evaluations without gain."""
        value = self.validation_loss()
        self.val_losses.append((self.step, value))
        if self.best is None or value < self.best[1] - self.config.min_delta:
            state = {k: v.detach().clone() for k, v in self.params.items()}
            self.best, self.bad_evals = (self.step, value, state), 0
        else:
            self.bad_evals += 1
            patience = self.config.patience
            self.stopped_early = patience is not None and self.bad_evals >= patience
        return value

    # -- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self, path: Path) -> None:
        """Adapter + best adapter + optimizer as tensors; step, history and seed as metadata."""
        tensors = {f"param.{k}": v for k, v in self.params.items()}
        meta = {
            "step": str(self.step),
            "seed": str(self.config.seed),
            "rng": "per-step torch.Generator seeded by sha256(seed, stream, step)",
            "resume_key": self.config.resume_key(),
            "losses": json.dumps(self.losses),
            "val_losses": json.dumps(self.val_losses),
            "bad_evals": str(self.bad_evals),
            "stopped_early": json.dumps(self.stopped_early),
        }
        if self.best is not None:
            tensors.update({f"best.{k}": v for k, v in self.best[2].items()})
            meta["best"] = json.dumps([self.best[0], self.best[1]])
        if self.adversary is not None:
            tensors.update(self.adversary.tensors())
            meta["adversarial_prompts"] = json.dumps(self.adversary.prompts())
        save_checkpoint(path, tensors=tensors, optimizer=self.optimizer, meta=meta)

    def load_checkpoint(self, path: Path) -> None:
        """Continue from :meth:`save_checkpoint`'s file (same settings but ``steps``)."""
        tensors, meta = load_checkpoint(path, optimizer=self.optimizer)
        if meta.get("resume_key") != self.config.resume_key():
            raise ValueError(
                f"checkpoint {str(path)!r} was written by a run with other settings; "
                f"only `steps` may change on --resume"
            )
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(tensors[f"param.{name}"])
        self.step = int(meta["step"])
        self.losses = [float(v) for v in json.loads(meta["losses"])]
        self.val_losses = [(int(s), float(v)) for s, v in json.loads(meta["val_losses"])]
        self.bad_evals = int(meta["bad_evals"])
        self.stopped_early = bool(json.loads(meta["stopped_early"]))
        if "best" in meta:
            best_step, best_value = json.loads(meta["best"])
            state = {k: tensors[f"best.{k}"] for k in self.params}
            self.best = (int(best_step), float(best_value), state)
        if self.adversary is not None:
            self.adversary.restore(json.loads(meta.get("adversarial_prompts", "[]")), tensors)

    # -- output ----------------------------------------------------------------------------

    def save_adapter(self, path: Path) -> dict[str, str]:
        """Write the best adapter (the last one without validation) with full metadata."""
        if self.best is not None:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(self.best[2][name])
        config = self.config
        info = {
            "adapter": config.adapter,
            "rank": config.rank,
            "alpha": config.lora_alpha,
            "target_modules": self.targets,
            "method": config.method,
            "concepts": [e.concept for e in config.erase],
            "anchors": {e.concept: e.anchor for e in config.erase},
            "preserve": list(config.preserve),
            "base": config.base or "safety_lora.models.concept_world",
            "base_fingerprint": self.fingerprint,
            "training_args": config.model_dump(mode="json"),
            "steps": self.step,
            "best_step": self.best[0] if self.best is not None else self.step,
            "val_loss": self.best[1] if self.best is not None else None,
        }
        return save_adapter_file(path, self.unet, ADAPTER_NAME, info)

    def close(self) -> None:
        """Remove the adapter and peft's wrappers; restore ``requires_grad`` and the mode."""
        unload_adapters(self.unet)
        for name, param in self.unet.named_parameters():
            param.requires_grad_(self._grad.get(name, param.requires_grad))
        self.unet.train(self._training)


@contextmanager
def _progress(enabled: bool, title: str, total: int, done: int) -> Iterator[Any]:
    """A rich progress bar with the loss (``update(loss=..., val=...)``), or a no-op."""
    if not enabled:
        yield None
        return
    from safety_lora.progress import progress_bar

    with progress_bar("loss {task.fields[loss]:.4f}  val {task.fields[val]}") as progress:
        task = progress.add_task(title, total=total, completed=done, loss=float("nan"), val="-")
        yield lambda **kw: progress.update(task, completed=kw.pop("step"), **kw)


def _due(step: int, every: int | None, last: bool) -> bool:
    """Whether a periodic action (every ``every`` steps, ``None``: never) runs at ``step``."""
    return every is not None and (last or step % every == 0)


def train_adapter(config: TrainConfig, *, pipe: Any | None = None) -> TrainResult:
    """Train an ESD adapter as ``config`` says and write it to ``config.out``.

    ``pipe`` (optional) is used instead of loading ``config.base``; its UNet gets the
    adapter during training and is returned to its previous state afterwards.
    """
    if pipe is None:
        pipe, _ = load_pipeline(config.base, config.device)
    trainer = EsdTrainer(pipe, config)
    try:
        ckpt = config.checkpoint_path
        if config.resume and ckpt.exists():
            trainer.load_checkpoint(ckpt)
        title = f"ESD {config.method} {config.adapter} r{config.rank}"
        began, first = time.perf_counter(), trainer.step
        with _progress(config.progress, title, config.steps, trainer.step) as update:
            while trainer.step < config.steps and not trainer.stopped_early:
                loss = trainer.train_step()
                at_end = trainer.step == config.steps
                fields: dict[str, Any] = {"step": trainer.step, "loss": loss}
                if _due(trainer.step, config.eval_every, at_end):
                    fields["val"] = f"{trainer.evaluate():.4f}"
                if _due(trainer.step, config.checkpoint_every, at_end or trainer.stopped_early):
                    trainer.save_checkpoint(ckpt)
                if update is not None:
                    update(**fields)
        seconds = time.perf_counter() - began
        ran = trainer.step - first
        metadata = trainer.save_adapter(config.out)
        best_step = trainer.best[0] if trainer.best is not None else trainer.step
        return TrainResult(
            path=config.out,
            steps=trainer.step,
            best_step=best_step,
            stopped_early=trainer.stopped_early,
            losses=list(trainer.losses),
            val_losses=list(trainer.val_losses),
            val_held_out=trainer.val_held_out,
            trainable_parameters=sum(p.numel() for p in trainer.params.values()),
            target_modules=list(trainer.targets),
            seconds=seconds,
            seconds_per_step=seconds / ran if ran else 0.0,
            metadata=metadata,
        )
    finally:
        trainer.close()
