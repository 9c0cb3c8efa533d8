"""What a closed-form edit reads from a pipeline: text states as the denoiser sees them, aligned.

States come from the pipeline's own ``encode_prompt`` (SD: the text encoder's last hidden
state; SDXL: both encoders' penultimate states side by side; SD3: the CLIP states then the
T5 states; Flux: the T5 states), at every token position the denoiser attends to, padding
included (CLIP's padding states carry the whole prompt).

Which weights are edited: a UNet's cross-attention keys/values (``attn2.to_k``/``to_v``),
the only layers that read the text states. A transformer denoiser (SD3, Flux) reads them
through one layer, ``context_embedder``, and everything downstream (every joint block's
``add_k_proj``/``add_v_proj``, the text stream's MLPs) sees its output mixed with image
tokens and timestep modulation, different per block and per step; so the edit goes on
``context_embedder``, where UCE's premise (inputs known before sampling, shared by every
edited layer) holds exactly. Their second text input, the pooled CLIP embedding
(``pooled_projections``, which modulates every block), gets its own edit of the same form on
``time_text_embed.text_embedder.linear_1``, one column per prompt (``EditInputs.pooled``).
Where this differs from editing ``add_k_proj``/``add_v_proj`` as UCE ports do: the concept
is removed from the whole text stream and from the modulation, not per block. PixArt's
blocks have a real cross-attention (``attn2``) reading the caption projection of the T5
states, the same for every block and step: there the edit is UCE's own, on every
``attn2.to_k``/``to_v``, with the projected states as its inputs.

Alignment pairs each position of an erase prompt with a position of its anchor prompt, from
a diff of the two token sequences: equal tokens map to their counterpart (a shared prefix
such as ``<bos> a`` maps to itself, so it acts as preservation), a replaced run maps to the
anchor's run aligned from its end (UCE's last-token alignment), an inserted concept token
maps to the anchor token before it (``"a red circle"``: ``red`` -> ``a`` of ``"a circle"``),
and padding maps to padding, shifted by the length difference.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from safety_lora.adapters.ldm_names import UnetLayout
from safety_lora.adapters.state import Denoiser
from safety_lora.internals import execution_device

__all__ = ["EditInputs", "align", "cross_attention_weights", "gather", "text_weights"]

_BATCH = 64


@dataclass(frozen=True)
class EditInputs:
    """Everything the solve depends on; its hash is the start-up cache key.

    ``concept``/``anchor`` are ``(d, n)`` float64 columns, one per erase-prompt position
    (anchor aligned to concept), ``preserve`` ``(d, m)`` one per preserve-prompt position;
    ``weights`` the base ``(out, d)`` weight of every edited module, as stored.
    """

    concept: torch.Tensor
    anchor: torch.Tensor
    preserve: torch.Tensor
    weights: dict[str, torch.Tensor]
    denoiser: Denoiser = "unet"
    layout: UnetLayout | None = None
    pooled: EditInputs | None = None

    @property
    def dim(self) -> int:
        """The text-state width ``d`` (the UNet's ``cross_attention_dim``)."""
        return int(self.concept.shape[0])

    def fingerprint(self) -> str:
        """sha256 over every state and weight (names, shapes, dtypes and bytes)."""
        digest = hashlib.sha256()
        tensors = {"concept": self.concept, "anchor": self.anchor, "preserve": self.preserve}
        for name, tensor in [*tensors.items(), *sorted(self.weights.items())]:
            flat = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(flat.shape)}:{flat.dtype}\n".encode())
            digest.update(flat.reshape(-1).view(torch.uint8).numpy().data)
        if self.pooled is not None:
            digest.update(f"pooled:{self.pooled.fingerprint()}".encode())
        return digest.hexdigest()


def align(concept_ids: Sequence[int], anchor_ids: Sequence[int], length: int) -> list[int]:
    """For each of ``length`` positions of the erase prompt, its anchor position (docstring).

    ``concept_ids``/``anchor_ids`` are the unpadded token ids, start and end tokens included.
    """
    n_c, n_a = len(concept_ids), len(anchor_ids)
    out = [0] * length
    matcher = difflib.SequenceMatcher(a=list(concept_ids), b=list(anchor_ids), autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        for p in range(i1, min(i2, length)):
            if tag == "equal":
                out[p] = j1 + (p - i1)
            elif tag == "replace":
                out[p] = min(j2 - 1, j1 + max(0, (p - i1) - ((i2 - i1) - (j2 - j1))))
            else:  # "delete": the concept's extra tokens
                out[p] = max(0, j1 - 1)
    for p in range(n_c, length):
        out[p] = min(length - 1, max(0, p - (n_c - n_a)))
    return out


def cross_attention_weights(unet: torch.nn.Module, dim: int) -> dict[str, torch.Tensor]:
    """Base weight of every cross-attention key/value projection (``attn2.to_k``/``to_v``).

    peft wrappers are seen through (their ``base_layer``); a projection whose input is not
    ``dim`` wide (a self-attention ``attn2``) is left out.
    """
    out: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not name.endswith(("attn2.to_k", "attn2.to_v")):
            continue
        layer: Any = getattr(module, "base_layer", module)
        if isinstance(layer, torch.nn.Linear) and layer.in_features == dim:
            out[name] = layer.weight.detach()
    if not out:
        raise ValueError(
            f"closed-form erasure: the UNet has no cross-attention attn2.to_k/to_v taking "
            f"{dim}-wide text states"
        )
    return out


#: A transformer denoiser's layers that read the text states and the pooled embedding.
CONTEXT_EMBEDDER, POOLED_EMBEDDER = "context_embedder", "time_text_embed.text_embedder.linear_1"


def text_weights(pipe: Any, dim: int, path: str = CONTEXT_EMBEDDER) -> dict[str, torch.Tensor]:
    """The base weights a closed-form edit changes (module docstring), by module path;
    ``path``: which text-reading layer of a transformer denoiser.
    """
    if getattr(pipe, "unet", None) is not None:
        return cross_attention_weights(pipe.unet, dim)
    if _pixart(pipe):
        return cross_attention_weights(pipe.transformer, dim)
    try:
        module = pipe.transformer.get_submodule(path)
    except AttributeError:
        module = None
    layer: Any = getattr(module, "base_layer", module)
    if not isinstance(layer, torch.nn.Linear) or layer.in_features != dim:
        raise ValueError(
            f"closed-form erasure on {type(pipe).__name__}: its denoiser has no `{path}` "
            f"Linear taking {dim}-wide text states"
        )
    return {path: layer.weight.detach()}


@torch.no_grad()
def encode(pipe: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(n, length, d)`` float64 CPU text states of ``prompts`` from ``pipe.encode_prompt``;
    for a transformer denoiser also the ``(n, d_pooled)`` pooled embeddings, else ``None``.
    """
    from safety_lora.conditioning import PromptBank

    chunks, pooled = [], []
    for start in range(0, len(prompts), _BATCH):
        batch = list(prompts[start : start + _BATCH])
        if _pixart(pipe):  # T5 states through the caption projection every attn2 reads
            embeds = pipe.encode_prompt(
                batch,
                do_classifier_free_guidance=False,
                device=pipe.transformer.device,
                clean_caption=False,
            )[0]
            projected = pipe.transformer.caption_projection(embeds)
            chunks.append(projected.detach().to("cpu", torch.float64))
            continue
        if getattr(pipe, "unet", None) is None:  # SD3/Flux: encoded as ESD training does
            bank = PromptBank.encode(pipe, batch, latent_size=0)
            rows = bank.index(batch)
            assert bank.pooled is not None
            chunks.append(bank.hidden[rows].to("cpu", torch.float64))
            pooled.append(bank.pooled[rows].to("cpu", torch.float64))
            continue
        out = pipe.encode_prompt(
            prompt=batch,
            device=execution_device(pipe),
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        chunks.append(out[0].detach().to("cpu", torch.float64))
    return torch.cat(chunks), torch.cat(pooled) if pooled else None


def _segments(pipe: Any, length: int) -> list[tuple[Any, int, int]]:
    """``(tokenizer, offset, length)`` of each run of positions in the states, in order."""
    if getattr(pipe, "unet", None) is not None or _pixart(pipe):
        return [(pipe.tokenizer, 0, length)]
    if hasattr(pipe, "text_encoder_3"):  # SD3: 77 CLIP positions, then T5's (zeros without T5)
        clip = int(pipe.tokenizer_max_length)
        return [(pipe.tokenizer, 0, clip), (pipe.tokenizer_3, clip, length - clip)]
    return [(pipe.tokenizer_2, 0, length)]  # Flux: T5 only


def _aligned(pipe: Any, erase_prompt: str, anchor_prompt: str, length: int) -> list[int]:
    """For every state position of ``erase_prompt``, its position in ``anchor_prompt``'s."""
    where: list[int] = []
    for tokenizer, offset, span in _segments(pipe, length):
        if tokenizer is None:  # no encoder: constant states, any alignment
            where.extend(range(offset, offset + span))
            continue
        ids = [
            tokenizer(p, truncation=True, max_length=span).input_ids
            for p in (erase_prompt, anchor_prompt)
        ]
        where.extend(offset + i for i in align(ids[0], ids[1], span))
    return where


def gather(pipe: Any, pairs: Sequence[tuple[str, str]], preserve: Sequence[str]) -> EditInputs:
    """Encode and align ``pairs`` (erase prompt, anchor prompt) and ``preserve`` for ``pipe``."""
    from safety_lora.adapters.names import ModuleIndex, denoiser_part
    from safety_lora.conditioning import denoiser_family

    if getattr(pipe, "tokenizer", None) is None:
        raise ValueError(
            f"closed-form erasure needs a pipeline with a `tokenizer`, got {type(pipe).__name__}"
        )
    denoiser_family(pipe)  # an unsupported denoiser fails here, naming it
    unique = list(dict.fromkeys([*(p for pair in pairs for p in pair), *preserve]))
    states, pooled = encode(pipe, unique)
    row = {p: i for i, p in enumerate(unique)}
    length, dim = int(states.shape[1]), int(states.shape[2])
    concept, anchor = [], []
    for erase_prompt, anchor_prompt in pairs:
        seen = _attended(pipe, erase_prompt, length)
        concept.append(states[row[erase_prompt]][seen])
        aligned = _aligned(pipe, erase_prompt, anchor_prompt, length)
        anchor.append(states[row[anchor_prompt]][[aligned[i] for i in seen]])
    kept = [states[row[p]][_attended(pipe, p, length)] for p in preserve]
    index = ModuleIndex.from_model(getattr(pipe, denoiser_part(pipe)))
    return EditInputs(
        concept=torch.cat(concept).T.contiguous(),
        anchor=torch.cat(anchor).T.contiguous(),
        preserve=torch.cat(kept).T.contiguous()
        if kept
        else torch.zeros(dim, 0, dtype=torch.float64),
        weights=text_weights(pipe, dim),
        denoiser=index.denoiser,
        layout=index.layout,
        pooled=None if pooled is None else _pooled_inputs(pipe, pooled, row, pairs, preserve),
    )


def _attended(pipe: Any, prompt: str, length: int) -> list[int]:
    """The state positions the denoiser attends to for ``prompt``: all of them, except for
    PixArt, whose attention mask hides T5's padding (so padding is no constraint there)."""
    if not _pixart(pipe):
        return list(range(length))
    mask = pipe.tokenizer(prompt, padding="max_length", max_length=length, truncation=True)
    return [i for i, on in enumerate(mask.attention_mask) if on]


def _pixart(pipe: Any) -> bool:
    return type(getattr(pipe, "transformer", None)).__name__.startswith("PixArt")


def _pooled_inputs(
    pipe: Any,
    pooled: torch.Tensor,
    row: dict[str, int],
    pairs: Sequence[tuple[str, str]],
    preserve: Sequence[str],
) -> EditInputs:
    """The pooled embeddings as edit inputs: one column per prompt (no positions to align)."""

    def columns(prompts: Sequence[str]) -> torch.Tensor:
        return pooled[[row[p] for p in prompts]].T.contiguous()

    return EditInputs(
        concept=columns([c for c, _ in pairs]),
        anchor=columns([a for _, a in pairs]),
        preserve=columns(preserve),
        weights=text_weights(pipe, int(pooled.shape[1]), POOLED_EMBEDDER),
        denoiser="transformer",
    )
