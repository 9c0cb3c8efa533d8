"""Text-embedding steering, after Semantic Surgery (Xiong et al., NeurIPS 2025): the concept's
presence is measured in the prompt's text embedding and the concept taken out before the
denoiser sees it. No extra denoiser pass, nothing to train; the directions come from the
pipeline's own ``encode_prompt`` when the pipeline is wrapped.

Per token, unlike the authors' code (which subtracts ``E(concept) - E(anchor)`` from every
position, scaled by one weight per prompt). With ``E`` the pipeline's prompt embedding (every
position) and ``a`` the anchor:

* concept ``c``'s unit direction ``u_c`` is the mean over positions of ``E(c) - E(a)``,
  normalised;
* a token is steered for ``c`` when the cosine between it and ``u_c`` reaches ``threshold``; a
  prompt's presence of ``c`` is its largest such cosine;
* each steered token ``e`` becomes ``e - strength * P (e - mean E(a))``, ``P`` the projection on
  the span of the directions of the concepts present at that token: at strength 1 its
  coordinates along them are the anchor's. SDXL's pooled embedding moves the same way, with
  pooled directions, for the concepts present anywhere in its prompt.

``strength`` is the policy's per-request strength (0: nothing installed, the pipeline
untouched). Embeddings the caller passes (``prompt_embeds=``) reach ``encode_prompt`` too and
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

    ``presence[b, k]``: concept ``k``'s presence in row ``b``; ``tokens[b, i]``: whether token
    ``i`` of row ``b`` was steered; ``selected[b]``: the concepts present in row ``b``.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None
    presence: torch.Tensor
    tokens: torch.Tensor
    selected: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class _Directions:
    """Unit directions ``[K, D]`` (and SDXL's pooled ``[K, P]``) and the anchor's mean token
    ``[D]`` (and pooled ``[P]``) for one ``clip_skip``."""

    hidden: torch.Tensor
    anchor: torch.Tensor
    pooled: torch.Tensor | None
    anchor_pooled: torch.Tensor | None


def _take_out(
    rows: torch.Tensor, on: torch.Tensor, units: torch.Tensor, anchor: torch.Tensor, scale: float
) -> torch.Tensor:
    """``rows`` ``[N, D]`` minus ``scale`` times the projection of ``rows - anchor`` on the span
    of the ``units`` ``[K, D]`` that ``on`` ``[N, K]`` selects for each row."""
    basis = units.float()[None] * on[..., None].float()  # [N, K, D], unselected rows zero
    offset = rows.float() - anchor.float()
    coeffs: torch.Tensor = torch.linalg.pinv(basis.transpose(1, 2)) @ offset[..., None]  # [N,K,1]
    return rows - (scale * (basis.transpose(1, 2) @ coeffs)[..., 0]).to(rows)


class EmbeddingSteering:
    """``concepts``' directions (from ``E(concept) - E(anchor)``) from ``pipe``'s own text
    encoder(s), and :meth:`on`, which steers the pipeline's prompt embeddings for the calls in
    its block. Directions are encoded once per ``clip_skip`` a call uses (``None`` at
    construction), then reused."""

    def __init__(
        self, pipe: Any, *, concepts: Sequence[str], anchor: str = "", threshold: float = 0.4
    ) -> None:
        check_pipeline(pipe)
        if not concepts or any(not c.strip() for c in concepts):
            raise ValueError(f"EmbeddingSteering: `concepts` must be non-blank terms: {concepts!r}")
        self.pipe = pipe
        self.concepts = tuple(concepts)
        self.anchor = anchor
        self.threshold = float(threshold)
        self._directions: dict[int | None, _Directions] = {}
        self._encode(None)

    # -- directions --------------------------------------------------------------------------

    @torch.no_grad()
    def _encode(self, clip_skip: int | None) -> _Directions:
        """The directions for ``clip_skip``, encoded with the pipeline's own ``encode_prompt``
        on first use."""
        if clip_skip in self._directions:
            return self._directions[clip_skip]
        encode = type(self.pipe).encode_prompt  # the class's, never a wrapper of ours
        out = encode(
            self.pipe,
            prompt=[*self.concepts, self.anchor],
            device=execution_device(self.pipe),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            clip_skip=clip_skip,
        )
        hidden, pooled = out[0].detach(), out[2].detach() if len(out) == 4 else None
        found = _Directions(
            hidden=F.normalize((hidden[:-1] - hidden[-1:]).mean(dim=1), dim=-1),
            anchor=hidden[-1].mean(dim=0),
            pooled=None if pooled is None else F.normalize(pooled[:-1] - pooled[-1:], dim=-1),
            anchor_pooled=None if pooled is None else pooled[-1],
        )
        self._directions[clip_skip] = found
        return found

    # -- measuring and steering ----------------------------------------------------------------

    def cosines(self, hidden: torch.Tensor, *, clip_skip: int | None = None) -> torch.Tensor:
        """``[batch, L, concepts]``: the cosine between each token of ``hidden`` (``[batch, L,
        D]`` prompt embeddings) and each concept's direction."""
        units = self._encode(clip_skip).hidden
        if hidden.dim() != 3 or hidden.shape[2] != units.shape[1]:
            raise ValueError(
                f"text-embedding steering: prompt embeddings of shape {tuple(hidden.shape)} do "
                f"not match the text encoder's [batch, L, {units.shape[1]}] (prompt_embeds of "
                f"another encoder cannot be measured)"
            )
        return F.normalize(hidden.float(), dim=-1) @ units.float().T

    def presence(self, hidden: torch.Tensor, *, clip_skip: int | None = None) -> torch.Tensor:
        """``[batch, concepts]``: each concept's presence in each row of ``hidden``, its
        largest cosine with a token of the row."""
        return self.cosines(hidden, clip_skip=clip_skip).amax(dim=1)

    @torch.no_grad()
    def steer(
        self,
        hidden: torch.Tensor,
        pooled: torch.Tensor | None = None,
        *,
        strength: float,
        clip_skip: int | None = None,
    ) -> Steered:
        """``hidden`` (and SDXL's ``pooled``) with the concepts present at each token taken out
        at ``strength``; tokens where none is present are left exactly as they are."""
        found = self._encode(clip_skip)
        cosines = self.cosines(hidden, clip_skip=clip_skip)
        on = cosines >= self.threshold  # [B, L, K]
        tokens = on.any(dim=-1)
        presence = cosines.amax(dim=1)
        out_hidden = hidden.clone()
        out_hidden[tokens] = _take_out(
            hidden[tokens], on[tokens], found.hidden.to(hidden), found.anchor, strength
        )
        out_pooled = None if pooled is None else pooled.clone()
        rows = on.any(dim=1)  # [B, K]
        moved = rows.any(dim=-1)
        if out_pooled is not None and found.pooled is not None and found.anchor_pooled is not None:
            out_pooled[moved] = _take_out(
                out_pooled[moved], rows[moved], found.pooled, found.anchor_pooled, strength
            )
        selected = tuple(
            tuple(c for c, hit in zip(self.concepts, row, strict=True) if hit)
            for row in rows.tolist()
        )
        return Steered(out_hidden, out_pooled, presence, tokens, selected)

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
