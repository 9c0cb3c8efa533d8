"""Text-embedding steering, after Semantic Surgery (Xiong et al., NeurIPS 2025): the concept's
presence is measured in the prompt's text embedding and its direction subtracted before the
denoiser sees it. No extra denoiser pass, nothing to train; the directions come from the
pipeline's own ``encode_prompt`` when the pipeline is wrapped.

As in the authors' code (``get_multi_erased_embedding`` in their ``src/utils.py``), with ``E``
the pipeline's prompt embedding (every position) and ``E(anchor)`` the neutral prompt's:

* presence of concept ``c`` in a prompt: the mean over positions of the cosine between
  ``E(c) - E(anchor)`` and ``E(prompt)``;
* the concepts whose presence reaches ``threshold`` are selected; the weight is
  ``alpha = max sigmoid((presence - threshold) / temperature)`` over them (0.5 at the
  threshold; 0 when none is selected);
* ``E'(prompt) = E(prompt) - strength * alpha * (E(selected) - E(anchor))``, with the selected
  concepts encoded together (comma-joined: the paper's co-occurrence encoding). SDXL's pooled
  embedding moves the same way with its own direction.

``strength`` is ours: the policy's per-request strength (0: nothing installed, the pipeline
untouched). Each prompt of a batch is measured on its own (the authors take one weight for the
whole batch). Embeddings the caller passes (``prompt_embeds=``) reach ``encode_prompt`` too and
are steered alike; a call whose pipeline never calls ``encode_prompt`` raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from safety_lora.internals import execution_device

__all__ = ["EmbeddingSteering", "EncodeCalls", "Steered", "check_pipeline"]


def check_pipeline(pipe: Any) -> None:
    """Raise ``ValueError`` naming ``pipe``'s class when text-embedding steering cannot steer it:
    it needs a UNet pipeline (SD 1.x, 2.x, SDXL) with ``encode_prompt``."""
    name = type(pipe).__name__
    if getattr(pipe, "unet", None) is None:
        raise ValueError(
            f"text-embedding steering (steering.text) needs a UNet pipeline (SD 1.x, 2.x, SDXL) "
            f"whose `encode_prompt` returns (prompt, negative[, pooled, negative pooled]): {name}"
        )
    if not callable(getattr(pipe, "encode_prompt", None)):
        raise ValueError(f"text-embedding steering needs a pipeline with `encode_prompt`: {name}")


@dataclass(frozen=True)
class Steered:
    """One batch of prompt embeddings after steering, and what was measured on it.

    ``presence[b, k]``: concept ``k``'s presence in row ``b``; ``alpha[b]``: the row's weight
    (before ``strength``); ``selected[b]``: the concepts subtracted from it.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None
    presence: torch.Tensor
    alpha: torch.Tensor
    selected: tuple[tuple[str, ...], ...]


class EmbeddingSteering:
    """``concepts``' directions (``E(concept) - E(anchor)``) from ``pipe``'s own text encoder(s),
    and :meth:`on`, which steers the pipeline's prompt embeddings for the calls in its block.

    Directions are encoded once per ``clip_skip`` a call uses (``None`` at construction), and
    per set of concepts selected together, then reused.
    """

    def __init__(
        self,
        pipe: Any,
        *,
        concepts: Sequence[str],
        anchor: str = "",
        threshold: float = 0.06,
        temperature: float = 0.02,
    ) -> None:
        check_pipeline(pipe)
        if not concepts or any(not c.strip() for c in concepts):
            raise ValueError(f"EmbeddingSteering: `concepts` must be non-blank terms: {concepts!r}")
        if not temperature > 0.0:
            raise ValueError(f"EmbeddingSteering: `temperature` must be > 0, got {temperature}")
        self.pipe = pipe
        self.concepts = tuple(concepts)
        self.anchor = anchor
        self.threshold = float(threshold)
        self.temperature = float(temperature)
        self._encoded: dict[tuple[str, int | None], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._encode([*self.concepts, anchor], None)

    # -- directions --------------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, texts: Sequence[str], clip_skip: int | None) -> None:
        """Encode the texts not yet cached with the pipeline's own ``encode_prompt``."""
        todo = [t for t in dict.fromkeys(texts) if (t, clip_skip) not in self._encoded]
        if not todo:
            return
        encode = type(self.pipe).encode_prompt  # the class's, never a wrapper of ours
        out = encode(
            self.pipe,
            prompt=todo,
            device=execution_device(self.pipe),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=clip_skip,
        )
        pooled = out[2] if len(out) == 4 else None
        for i, text in enumerate(todo):
            self._encoded[(text, clip_skip)] = (
                out[0][i].detach(),
                None if pooled is None else pooled[i].detach(),
            )

    def _direction(
        self, texts: Sequence[str], clip_skip: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``E(", ".join(texts)) - E(anchor)``: hidden ``[L, D]`` and pooled (SDXL) or None."""
        joined = ", ".join(texts)
        self._encode([joined, self.anchor], clip_skip)
        hidden, pooled = self._encoded[(joined, clip_skip)]
        hidden_n, pooled_n = self._encoded[(self.anchor, clip_skip)]
        delta_pooled = None if pooled is None or pooled_n is None else pooled - pooled_n
        return hidden - hidden_n, delta_pooled

    # -- measuring and steering ----------------------------------------------------------------

    def presence(self, hidden: torch.Tensor, *, clip_skip: int | None = None) -> torch.Tensor:
        """``[batch, concepts]``: each concept's presence in each row of ``hidden``
        (``[batch, L, D]`` prompt embeddings): the mean over positions of the cosine between
        the concept's direction and the row."""
        self._encode([*self.concepts, self.anchor], clip_skip)
        deltas = torch.stack([self._direction([c], clip_skip)[0] for c in self.concepts])
        if hidden.dim() != 3 or hidden.shape[1:] != deltas.shape[1:]:
            raise ValueError(
                f"text-embedding steering: prompt embeddings of shape {tuple(hidden.shape)} do "
                f"not match the text encoder's [batch, {deltas.shape[1]}, {deltas.shape[2]}] "
                f"(prompt_embeds of another length or encoder cannot be measured)"
            )
        deltas = deltas.to(hidden)
        cos = F.cosine_similarity(hidden[:, None], deltas[None], dim=-1)  # [B, K, L]
        return cos.mean(dim=-1)

    @torch.no_grad()
    def steer(
        self,
        hidden: torch.Tensor,
        pooled: torch.Tensor | None = None,
        *,
        strength: float,
        clip_skip: int | None = None,
    ) -> Steered:
        """``hidden`` (and SDXL's ``pooled``) with each row's selected concepts subtracted at
        ``strength`` times their weight; rows where no concept is present are left as they
        are."""
        presence = self.presence(hidden, clip_skip=clip_skip)
        present = presence >= self.threshold
        weight = torch.sigmoid((presence - self.threshold) / self.temperature)
        alpha = torch.where(present, weight, torch.zeros_like(weight)).amax(dim=1)
        out_hidden, out_pooled = hidden.clone(), None if pooled is None else pooled.clone()
        selected: list[tuple[str, ...]] = []
        for row in range(len(hidden)):
            names = tuple(
                c for c, on in zip(self.concepts, present[row].tolist(), strict=True) if on
            )
            selected.append(names)
            if not names:
                continue
            delta, delta_pooled = self._direction(names, clip_skip)
            scale = strength * alpha[row]
            out_hidden[row] -= scale * delta.to(hidden)
            if out_pooled is not None and delta_pooled is not None:
                out_pooled[row] -= scale * delta_pooled.to(out_pooled)
        return Steered(out_hidden, out_pooled, presence, alpha, tuple(selected))

    @contextmanager
    def on(self, pipe: Any, strength: float) -> Iterator[EncodeCalls]:
        """Inside the block, ``pipe.encode_prompt`` returns steered positive embeddings (SD's
        one, SDXL's concatenated pair and pooled; negatives untouched). Yields the count of
        steered ``encode_prompt`` calls. A UNet call before any ``encode_prompt`` call (a
        pipeline that encodes its prompt otherwise) raises rather than run unsteered. At
        strength 0 nothing is installed."""
        calls = EncodeCalls()
        if strength <= 0.0:
            yield calls
            return
        check_pipeline(pipe)
        original: Callable[..., Any] = pipe.encode_prompt
        signature = inspect.signature(original)

        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if not isinstance(out, tuple) or len(out) not in (2, 4):
                raise ValueError(
                    f"text-embedding steering: {type(pipe).__name__}.encode_prompt returned a "
                    f"{type(out).__name__}, not (prompt, negative[, pooled, negative pooled])"
                )
            clip_skip = signature.bind(*args, **kwargs).arguments.get("clip_skip")
            pooled = out[2] if len(out) == 4 else None
            steered = self.steer(out[0], pooled, strength=strength, clip_skip=clip_skip)
            calls.count += 1
            if pooled is None:
                return (steered.hidden, out[1])
            return (steered.hidden, out[1], steered.pooled, out[3])

        def unsteered(module: Any, args: Any) -> None:
            if not calls.count:
                raise ValueError(
                    f"text-embedding steering: {type(pipe).__name__} ran its UNet without "
                    f"calling `encode_prompt`, so its prompt cannot be steered; steer it with an "
                    f"adapter method (a file or closed_form entry) instead"
                )

        had = "encode_prompt" in vars(pipe)
        previous = vars(pipe).get("encode_prompt")
        pipe.encode_prompt = encode_prompt
        handle = pipe.unet.register_forward_pre_hook(unsteered)
        try:
            yield calls
        finally:
            handle.remove()
            if had:
                pipe.encode_prompt = previous
            else:
                del pipe.encode_prompt


@dataclass
class EncodeCalls:
    """How many ``encode_prompt`` calls :meth:`EmbeddingSteering.on` steered in its block."""

    count: int = 0
