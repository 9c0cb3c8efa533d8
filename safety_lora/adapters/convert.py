"""Convert adapter files between formats: exactly where the target can hold the family.

LoHa, LoKr and full cannot be written as plain LoRA (kohya/PEFT) without loss; with
``approximate=True`` each module's exact delta is truncated by SVD to the source rank (or a
given one) and the relative Frobenius error is reported per module and overall.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from safety_lora.adapters.formats import FORMATS, FormatName, read_adapter, write_adapter
from safety_lora.adapters.names import ModuleIndex
from safety_lora.adapters.state import AdapterFormatError, AdapterState, Family, ModuleWeights

__all__ = ["ConversionReport", "convert", "to_lora_svd"]


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert` wrote; errors are relative Frobenius norms (0.0 when exact)."""

    source: Path
    target: Path
    source_format: FormatName
    target_format: FormatName
    source_family: Family
    target_family: Family
    exact: bool
    modules: int
    module_errors: dict[str, float] = field(default_factory=dict)
    overall_error: float = 0.0


def convert(
    in_path: str | Path,
    out_path: str | Path,
    *,
    to: FormatName,
    approximate: bool = False,
    rank: int | None = None,
    unet: torch.nn.Module | ModuleIndex | None = None,
    text_encoders: Mapping[str, torch.nn.Module | ModuleIndex] | None = None,
) -> ConversionReport:
    """Rewrite ``in_path`` as format ``to`` at ``out_path``.

    ``unet`` (a model or its :class:`ModuleIndex`) resolves kohya names and conv shapes
    (default: the SD 1.x/2.x and SDXL layouts); ``text_encoders`` (by component) resolve
    text-encoder parts (default: the CLIP text layouts).
    ``rank`` sets the SVD rank of an approximate conversion (default: the source rank).
    """
    if to not in FORMATS:
        raise AdapterFormatError(f"unknown target format {to!r}; known: {sorted(FORMATS)}")
    if rank is not None and rank < 1:
        raise ValueError(f"`rank` must be >= 1, got {rank}")
    state, source_format = read_adapter(in_path, unet=unet, text_encoders=text_encoders)
    errors: dict[str, float] = {}
    overall = 0.0
    exact = state.family in FORMATS[to].families
    out_state = state
    if not exact:
        if not approximate:
            raise AdapterFormatError(
                f"{str(in_path)!r}: a {state.family} adapter cannot be written exactly as "
                f"{to} (plain LoRA); pass approximate=True (CLI: --approximate) for an SVD "
                f"approximation with its error reported"
            )
        out_state, errors, overall = to_lora_svd(state, rank=rank)
    write_adapter(out_state, out_path, to=to)
    return ConversionReport(
        source=Path(in_path),
        target=Path(out_path),
        source_format=source_format,
        target_format=to,
        source_family=state.family,
        target_family=out_state.family,
        exact=exact,
        modules=len(state.modules),
        module_errors=errors,
        overall_error=overall,
    )


def to_lora_svd(
    state: AdapterState, *, rank: int | None = None
) -> tuple[AdapterState, dict[str, float], float]:
    """A LoRA (``alpha = rank``) of each module's exact delta, truncated by SVD.

    Returns the state, the relative Frobenius error per module and overall (text-encoder
    modules named ``<component>.<path>``). A ``diff_b`` bias cannot be held by LoRA: it is
    dropped and counted in the error (over ``[W | b]``).
    """
    errors: dict[str, float] = {}
    sums = [0.0, 0.0]  # squared error, squared norm
    modules = _svd_modules(state, rank, errors, sums, "")
    text = {
        c: AdapterState("lora", _svd_modules(part, rank, errors, sums, f"{c}."), part.metadata)
        for c, part in state.text_encoders.items()
    }
    overall = math.sqrt(sums[0] / sums[1]) if sums[1] > 0 else 0.0
    out = dataclasses.replace(
        state,
        family="lora",
        modules=modules,
        metadata=dict(state.metadata),
        shapes=dict(state.shapes),
        text_encoders=text,
    )
    return out, errors, overall


def _svd_modules(
    state: AdapterState, rank: int | None, errors: dict[str, float], sums: list[float], name: str
) -> dict[str, ModuleWeights]:
    """Each module of one part as an SVD LoRA; errors and squared sums accumulate."""
    modules: dict[str, ModuleWeights] = {}
    for path, weights in state.modules.items():
        delta = state.delta(path)
        shape = state.shapes.get(path)
        if shape is not None and len(shape) == 4 and delta.dim() != 4:
            raise AdapterFormatError(
                f"module {path!r}: the adapter's conv delta {tuple(delta.shape)} does not fit the "
                f"reference weight shape {shape}; pass the base UNet (CLI: --base) to convert it"
            )
        dtype = next(iter(weights.tensors.values())).dtype
        matrix = delta.flatten(1).to(torch.float64)
        k = rank or state.rank(path) or min(matrix.shape)
        k = min(k, *matrix.shape)
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        root = s[:k].sqrt()
        up, down = u[:, :k] * root, root[:, None] * vh[:k]
        err2 = float((matrix - up @ down).pow(2).sum())
        norm2 = float(matrix.pow(2).sum())
        bias = weights.tensors.get("diff_b")
        if bias is not None:
            b2 = float(bias.to(torch.float64).pow(2).sum())
            err2, norm2 = err2 + b2, norm2 + b2
        errors[name + path] = math.sqrt(err2 / norm2) if norm2 > 0 else 0.0
        sums[0], sums[1] = sums[0] + err2, sums[1] + norm2
        conv = delta.dim() == 4
        down_t = down.reshape(k, *delta.shape[1:]) if conv else down
        up_t = up.reshape(up.shape[0], k, 1, 1) if conv else up
        modules[path] = ModuleWeights(
            {"lora_down": down_t.to(dtype).contiguous(), "lora_up": up_t.to(dtype).contiguous()},
            float(k),
        )
    return modules
