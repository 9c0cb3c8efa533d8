"""Text-encoder states of a prompt with ``k`` free token embeddings after its start token.

The free embeddings go in through a forward hook on the encoder's input embedding table, so
positions, the causal mask and the end token are the model's own and the same code serves
any CLIP text encoder (transformers 4's ``text_model.`` layout and 5's flat one). With no
free tokens the states equal the pipeline's ``encode_prompt`` (tested).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["PromptEncoder"]


class PromptEncoder:
    """Encodes prompts for one SD-style pipeline (one CLIP text encoder)."""

    def __init__(self, pipe: Any) -> None:
        if getattr(pipe, "text_encoder_2", None) is not None:
            raise ValueError(
                "attack: pipelines with two text encoders (SDXL) are not supported yet; "
                "attack an SD 1.x/2.x pipeline or the concept-world model"
            )
        if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
            raise ValueError(f"attack: {type(pipe).__name__} has no `text_encoder`/`tokenizer`")
        self.tokenizer = pipe.tokenizer
        self.encoder = pipe.text_encoder
        self.table: torch.nn.Embedding = self.encoder.get_input_embeddings()
        self.length = int(self.tokenizer.model_max_length)
        self.device = self.encoder.device
        self._free: torch.Tensor | None = None

    @property
    def vocabulary(self) -> torch.Tensor:
        """The input embedding table, ``[vocab, dim]`` (no grad)."""
        return self.table.weight.detach()

    def ids(self, prompt: str, k: int) -> torch.Tensor:
        """``[length]`` token ids: start, ``k`` placeholders, the prompt's tokens, end, padding."""
        tok = self.tokenizer
        body = tok(prompt, add_special_tokens=False).input_ids
        if 1 + k + len(body) + 1 > self.length:
            raise ValueError(
                f"attack: prompt {prompt!r} has {len(body)} tokens; with {k} attack tokens it "
                f"exceeds the encoder's {self.length} (use a shorter prompt or fewer tokens)"
            )
        ids = [tok.bos_token_id, *[tok.bos_token_id] * k, *body, tok.eos_token_id]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids += [pad] * (self.length - len(ids))
        return torch.tensor(ids, dtype=torch.long)

    def token_ids(self, text: str) -> list[int]:
        """The prompt's own token ids (no start/end)."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text whose words are these tokens (BPE may tokenize it differently)."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True)).strip()

    @contextmanager
    def _inject(self, free: torch.Tensor | None) -> Iterator[None]:
        if free is None:
            yield
            return

        def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
            k = free.shape[1]
            return torch.cat([output[:, :1], free.to(output), output[:, 1 + k :]], dim=1)

        handle = self.table.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def states(self, ids: torch.Tensor, free: torch.Tensor | None = None) -> torch.Tensor:
        """``[batch, length, dim]`` states of ``ids`` (``[batch, length]``), differentiable in
        ``free`` (``[batch, k, embed]``, the embeddings at positions ``1..k``)."""
        if free is not None and free.shape[0] != ids.shape[0]:
            raise ValueError(f"attack: {free.shape[0]} free embeddings for {ids.shape[0]} prompts")
        with self._inject(free):
            out: torch.Tensor = self.encoder(ids.to(self.device))[0]
        return out

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """States of plain prompts, as the pipeline makes them."""
        return self.states(torch.stack([self.ids(p, 0) for p in prompts]))
