"""What a closed-form edit reads from a pipeline: text states as the UNet sees them, aligned.

States come from the pipeline's own ``encode_prompt`` (SD: the text encoder's last hidden
state; SDXL: both encoders' penultimate states side by side), at every token position the
UNet attends to, padding included (CLIP's padding states carry the whole prompt).

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

__all__ = ["EditInputs", "align", "cross_attention_weights", "gather"]

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
            digest.update(flat.view(torch.uint8).numpy().data)
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


@torch.no_grad()
def encode(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    """``(n, length, d)`` float64 CPU text states of ``prompts`` from ``pipe.encode_prompt``."""
    device = getattr(pipe, "_execution_device", None) or pipe.unet.device
    chunks = []
    for start in range(0, len(prompts), _BATCH):
        out = pipe.encode_prompt(
            prompt=list(prompts[start : start + _BATCH]),
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        chunks.append(out[0].detach().to("cpu", torch.float64))
    return torch.cat(chunks)


def _ids(pipe: Any, prompt: str, length: int) -> list[int]:
    ids: list[int] = pipe.tokenizer(prompt, truncation=True, max_length=length).input_ids
    return ids


def gather(pipe: Any, pairs: Sequence[tuple[str, str]], preserve: Sequence[str]) -> EditInputs:
    """Encode and align ``pairs`` (erase prompt, anchor prompt) and ``preserve`` for ``pipe``."""
    if getattr(pipe, "unet", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ValueError(
            f"closed-form erasure needs a pipeline with a `unet` and a `tokenizer`, got "
            f"{type(pipe).__name__}"
        )
    unique = list(dict.fromkeys([*(p for pair in pairs for p in pair), *preserve]))
    states = encode(pipe, unique)
    row = {p: i for i, p in enumerate(unique)}
    length, dim = int(states.shape[1]), int(states.shape[2])
    concept, anchor = [], []
    for erase_prompt, anchor_prompt in pairs:
        where = align(_ids(pipe, erase_prompt, length), _ids(pipe, anchor_prompt, length), length)
        concept.append(states[row[erase_prompt]])
        anchor.append(states[row[anchor_prompt]][where])
    kept = [states[row[p]] for p in preserve]
    return EditInputs(
        concept=torch.cat(concept).T.contiguous(),
        anchor=torch.cat(anchor).T.contiguous(),
        preserve=torch.cat(kept).T.contiguous()
        if kept
        else torch.zeros(dim, 0, dtype=torch.float64),
        weights=cross_attention_weights(pipe.unet, dim),
    )
