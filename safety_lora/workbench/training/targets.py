"""Which denoiser modules an ESD adapter trains, and the peft config of each adapter kind.

* ``esd-x`` — cross-attention only: every ``attn2`` projection (``to_q``, ``to_k``, ``to_v``,
  ``to_out.0``), as the ESD paper's ESD-x fine-tunes all ``attn2`` parameters. Only
  cross-attention reads the prompt, so the edit stays tied to the text (the paper's choice
  for erasing a concept named in prompts). Selected by full name: a bare ``"to_k"`` would
  also hit self-attention (``attn1``).
* ``esd-u`` — every ``Linear``/``Conv2d`` *outside* cross-attention and the time/added
  embeddings (as the paper's ESD-u): an unconditional edit that also removes the concept
  when it is not named (the paper's choice for nudity and styles that leak).

Transformer denoisers (SD3, Flux) have joint attention instead of cross-attention: image
and text tokens attend together. There ``esd-x`` takes the text-token projections of every
joint attention (``add_q_proj``, ``add_k_proj``, ``add_v_proj``, ``to_add_out``; Flux's
single-stream blocks have none), the only weights that act on the prompt alone, and
``esd-u`` everything else but the embedders (timestep/text/patch/guidance). PixArt's blocks
have a real cross-attention (``attn2``) and are treated as a UNet's, its embedders
(``adaln_single``, ``caption_projection``, ``pos_embed``) left out of ``esd-u``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from safety_lora.workbench.training.config import AdapterKind, Method

__all__ = ["ADAPTER_KINDS", "peft_config", "target_modules"]

_CROSS_ATTENTION = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
_EMBEDDINGS = ("time_embedding", "add_embedding", "class_embedding")
_JOINT_TEXT = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
_TRANSFORMER_EMBEDDINGS = ("time_text_embed", "context_embedder", "x_embedder", "pos_embed")
_PIXART_EMBEDDINGS = ("adaln_single", "caption_projection", "pos_embed")


def _adaptable(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear | torch.nn.Conv2d)


def target_modules(
    unet: torch.nn.Module, method: Method, override: Sequence[str] | None = None
) -> list[str]:
    """Full names of the UNet's modules the adapter goes on, in module order.

    ``override`` entries match a module whose name equals the entry or ends with
    ``"." + entry`` (peft's rule); an entry matching nothing is an error.
    """
    names = [name for name, m in unet.named_modules() if _adaptable(m)]
    if override is not None:
        chosen = [n for n in names if any(n == o or n.endswith("." + o) for o in override)]
        unmatched = [o for o in override if not any(n == o or n.endswith("." + o) for n in names)]
        if unmatched:
            raise ValueError(f"`target_modules` entries {unmatched} match no Linear/Conv2d")
        return chosen
    text: tuple[str, ...] = _CROSS_ATTENTION
    embeddings: tuple[str, ...] = _EMBEDDINGS
    if type(unet).__name__.startswith("PixArt"):
        embeddings = _PIXART_EMBEDDINGS
    elif "Transformer" in type(unet).__name__:  # joint attention (SD3, Flux)
        text, embeddings = _JOINT_TEXT, _TRANSFORMER_EMBEDDINGS
    if method == "esd-x":
        chosen = [n for n in names if n.endswith(text)]
    elif method == "esd-u":
        chosen = [
            n for n in names
            if not n.endswith(text) and ".attn2." not in n and not any(e in n for e in embeddings)
        ]  # fmt: skip
    else:
        raise ValueError(f"`method` must be 'esd-x' or 'esd-u', got {method!r}")
    if not chosen:
        raise ValueError(f"method {method!r} selects no module of this UNet")
    return chosen


def _lora(rank: int, alpha: float, targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True)


def _loha(rank: int, alpha: float, targets: list[str]) -> Any:
    from peft import LoHaConfig

    return LoHaConfig(r=rank, alpha=alpha, target_modules=targets, init_weights=True)


def _lokr(rank: int, alpha: float, targets: list[str]) -> Any:
    from peft import LoKrConfig

    return LoKrConfig(r=rank, alpha=alpha, target_modules=targets, init_weights=True)


#: Adapter kind -> builder of its peft config (zero-initialised: training starts at the base).
ADAPTER_KINDS: dict[str, Callable[[int, float, list[str]], Any]] = {
    "lora": _lora,
    "loha": _loha,
    "lokr": _lokr,
}


def peft_config(kind: AdapterKind, rank: int, alpha: float, targets: list[str]) -> Any:
    """The peft config (``LoraConfig``/``LoHaConfig``/``LoKrConfig``) of one adapter."""
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"`adapter` must be one of {sorted(ADAPTER_KINDS)}, got {kind!r}")
    return ADAPTER_KINDS[kind](rank, alpha, list(targets))
