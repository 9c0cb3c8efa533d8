"""The in-memory adapter every format reads into and writes from.

An :class:`AdapterState` holds one family's tensors per UNet module, keyed by the diffusers
module path (``down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k``), with each
module's alpha kept as stored, so that readers and writers round-trip tensors exactly.
Tensor names inside a module are the LyCORIS/kohya ones (``lora_down``, ``hada_w1_a``,
``lokr_w2``, ``diff`` ...), without the ``.weight`` suffix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from safety_lora.adapters.ldm_names import UnetLayout

__all__ = [
    "FAMILIES",
    "TENSOR_NAMES",
    "AdapterFormatError",
    "AdapterIntegrityError",
    "AdapterState",
    "Component",
    "Denoiser",
    "Family",
    "ModuleWeights",
    "lora_down",
]

Family = Literal["lora", "loha", "lokr", "full"]
#: The pipeline components an adapter file can have parts for (``unet``: the denoiser).
Component = Literal["unet", "text_encoder", "text_encoder_2"]
#: Where the denoiser sits on the pipeline: ``pipe.unet``, or ``pipe.transformer`` (SD3, Flux).
Denoiser = Literal["unet", "transformer"]

#: The families, and the tensor names each may hold per module (required ones first).
#: LoRA's ``lora_mid`` is Tucker LoCon's core; ``dora_scale`` is DoRA's magnitude.
TENSOR_NAMES: dict[Family, tuple[str, ...]] = {
    "lora": ("lora_down", "lora_up", "lora_mid", "dora_scale"),
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"),
    "full": ("diff", "diff_b"),
}
FAMILIES: tuple[Family, ...] = tuple(TENSOR_NAMES)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class AdapterFormatError(ValueError):
    """An adapter file or state is malformed, unsupported or does not fit the UNet."""


class AdapterIntegrityError(ValueError):
    """A steering adapter file is missing or does not match the sha256 its policy pins."""


@dataclass(frozen=True)
class ModuleWeights:
    """One module's adapter tensors and its alpha as stored (``None`` when the file has none)."""

    tensors: Mapping[str, torch.Tensor]
    alpha: float | None = None


@dataclass
class AdapterState:
    """One adapter of one family: tensors per diffusers module path, plus file metadata.

    ``shapes`` holds the base weight shape of each module when it is known (from the UNet or
    a reference architecture); it is needed only to rebuild factorised conv deltas.
    ``layout`` is the UNet's block structure when known: kohya/LyCORIS files for an SDXL
    layout are written with the LDM module names sd-scripts, A1111 and ComfyUI use.
    ``text_encoders`` holds the file's text-encoder parts by pipeline component
    (``text_encoder``, ``text_encoder_2``), each an adapter of the same family on that model.
    ``denoiser`` is ``transformer`` for an adapter of a transformer denoiser (SD3, Flux).
    """

    family: Family
    modules: dict[str, ModuleWeights]
    metadata: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layout: UnetLayout | None = None
    text_encoders: dict[Component, AdapterState] = field(default_factory=dict)
    denoiser: Denoiser = "unet"

    def __post_init__(self) -> None:
        if self.family not in TENSOR_NAMES:
            raise AdapterFormatError(f"unknown adapter family {self.family!r}; known: {FAMILIES}")
        if not self.modules:
            raise AdapterFormatError("adapter has no modules")
        for path, weights in self.modules.items():
            _check_module(self.family, path, weights)
        for component, part in self.text_encoders.items():
            if part.family != self.family:
                raise AdapterFormatError(
                    f"{component}: a {part.family} part next to a {self.family} UNet part; one "
                    f"file holds one family"
                )

    @property
    def dora(self) -> bool:
        """Whether the modules are DoRA (a magnitude ``dora_scale`` renormalises each weight)."""
        return any("dora_scale" in m.tensors for m in self.modules.values())

    def rank(self, path: str) -> int | None:
        """The module's rank (``None`` for ``full`` and for LoKr without a low-rank factor)."""
        t = self.modules[path].tensors
        if self.family == "lora":
            return int(t["lora_down"].shape[0])
        if self.family == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.family == "lokr":
            if "lokr_w1_a" in t:
                return int(t["lokr_w1_a"].shape[1])
            if "lokr_w2_a" in t:  # (r, out) with a Tucker core, else (out, r)
                return int(t["lokr_w2_a"].shape[0 if "lokr_t2" in t else 1])
            return None
        return None

    def scale(self, path: str) -> float:
        """The factor the module's product is multiplied by: ``alpha / rank`` as LyCORIS/kohya.

        A missing or zero alpha means ``alpha = rank`` (scale 1); LoKr without a low-rank
        factor and ``full`` always have scale 1.
        """
        rank = self.rank(path)
        alpha = self.modules[path].alpha
        if rank is None or alpha is None or alpha == 0:
            return 1.0
        return alpha / rank

    def effective_alpha(self, path: str) -> float:
        """``scale * rank`` without rounding: the stored alpha, or the rank when it is 0/missing."""
        rank = self.rank(path)
        alpha = self.modules[path].alpha
        if rank is None:
            return 1.0
        return float(rank) if alpha is None or alpha == 0 else alpha

    def delta(self, path: str) -> torch.Tensor:
        """The module's exact weight delta (fp32), shaped like the base weight when known.

        DoRA has none: its change rescales the base weight, so it depends on that weight.
        """
        t = {k: v.to(torch.float32) for k, v in self.modules[path].tensors.items()}
        scale = self.scale(path)
        if "dora_scale" in t:
            raise AdapterFormatError(
                f"{path}: a DoRA module's change depends on the base weight (it renormalises "
                f"W + up @ down to the magnitude dora_scale); it has no weight delta of its own"
            )
        if self.family == "lora":
            up, down = t["lora_up"], lora_down(t)
            out = (up.flatten(1) @ down.flatten(1)) * scale
            return out.reshape(up.shape[0], *down.shape[1:])
        if self.family == "loha":
            if "hada_t1" in t:
                w1 = _tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"])
                w2 = _tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
            else:
                w1 = t["hada_w1_a"] @ t["hada_w1_b"]
                w2 = t["hada_w2_a"] @ t["hada_w2_b"]
            return self._shaped(path, w1 * w2 * scale)
        if self.family == "lokr":
            k1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            if "lokr_w2" in t:
                k2 = t["lokr_w2"]
            elif "lokr_t2" in t:
                k2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
            else:
                k2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
            while k1.dim() < k2.dim():
                k1 = k1.unsqueeze(-1)
            out = torch.kron(k1, k2.contiguous())
            return self._shaped(path, out * scale)
        return t["diff"]

    def delta_shape(self, path: str) -> tuple[int, ...]:
        """The delta's shape from the tensor shapes alone (flattened past dim 0 when unknown)."""
        t = self.modules[path].tensors
        s = {k: tuple(v.shape) for k, v in t.items()}
        if self.family == "lora":
            return (s["lora_up"][0], s["lora_down"][1], *s.get("lora_mid", s["lora_down"])[2:])
        if self.family == "loha":
            if "hada_t1" in s:
                return (s["hada_w1_a"][1], s["hada_w1_b"][1], *s["hada_t1"][2:])
            return (s["hada_w1_a"][0], s["hada_w1_b"][1])
        if self.family == "lokr":
            a = s["lokr_w1"] if "lokr_w1" in s else (s["lokr_w1_a"][0], s["lokr_w1_b"][1])
            if "lokr_w2" in s:
                b = s["lokr_w2"]
            elif "lokr_t2" in s:
                b = (s["lokr_w2_a"][1], s["lokr_w2_b"][1], *s["lokr_t2"][2:])
            else:
                b = (s["lokr_w2_a"][0], s["lokr_w2_b"][1])
            return (a[0] * b[0], a[1] * b[1], *b[2:])
        return s["diff"]

    def _shaped(self, path: str, flat: torch.Tensor) -> torch.Tensor:
        shape = self.shapes.get(path)
        if shape is None or tuple(flat.shape) == shape or flat.numel() != math.prod(shape):
            return flat
        return flat.reshape(shape)

    def parameter_count(self) -> int:
        """Number of adapter parameters (alphas not counted)."""
        return sum(v.numel() for m in self.modules.values() for v in m.tensors.values())


def lora_down(t: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """A LoRA module's down factor, with a Tucker LoCon core folded in (exactly: ``mid`` is
    applied to ``down``'s 1x1 output, so ``(mid * down)`` is the ``k x k`` down conv).
    """
    down = t["lora_down"]
    mid = t.get("lora_mid")
    if mid is None:
        return down
    return torch.einsum("m n ..., n j -> m j ...", mid, down.flatten(1))


def _tucker(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """LyCORIS' CP/Tucker rebuild: ``t[i,j,...] wa[i,p] wb[j,r] -> [p,r,...]``."""
    return torch.einsum("i j ..., i p, j r -> p r ...", t, wa, wb)


def _check_module(family: Family, path: str, weights: ModuleWeights) -> None:
    """Required tensors present, float dtypes, finite values, consistent inner dimensions."""
    t = weights.tensors
    allowed = TENSOR_NAMES[family]
    unknown = sorted(set(t) - set(allowed))
    if unknown:
        raise AdapterFormatError(f"{path}: unexpected {family} tensors {unknown}")
    required_by: dict[Family, list[tuple[str, ...]]] = {
        "lora": [("lora_down",), ("lora_up",)],
        "loha": [("hada_w1_a",), ("hada_w1_b",), ("hada_w2_a",), ("hada_w2_b",)],
        "lokr": [("lokr_w1", "lokr_w1_a"), ("lokr_w2", "lokr_w2_a")],
        "full": [("diff",)],
    }
    required = required_by[family]
    for options in required:
        if not any(o in t for o in options):
            have = sorted(t)
            raise AdapterFormatError(f"{path}: missing {' or '.join(options)} (has {have})")
    pairs = [("lokr_w1_a", "lokr_w1_b"), ("lokr_w2_a", "lokr_w2_b"), ("hada_t1", "hada_t2")]
    for a, b in pairs:
        if (a in t) != (b in t):
            raise AdapterFormatError(f"{path}: {a if a in t else b} without {b if a in t else a}")
    if "lokr_t2" in t and "lokr_w2_a" not in t:
        raise AdapterFormatError(f"{path}: lokr_t2 without lokr_w2_a/lokr_w2_b")
    for name, tensor in t.items():
        if tensor.dtype not in _FLOAT_DTYPES:
            raise AdapterFormatError(
                f"{path}.{name}: dtype {tensor.dtype} is not a floating-point type"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise AdapterFormatError(f"{path}.{name}: contains NaN or inf values")
    if weights.alpha is not None and not math.isfinite(weights.alpha):
        raise AdapterFormatError(f"{path}.alpha: {weights.alpha} is not finite")
    _check_inner(family, path, t)


def _check_inner(family: Family, path: str, t: Mapping[str, torch.Tensor]) -> None:
    """The rank dimensions that must agree between factors of one module."""
    checks: list[tuple[str, int, str, int]] = []
    if family == "lora":
        checks = [("lora_down", 0, "lora_up", 1)]
        if "lora_mid" in t:
            checks = [("lora_mid", 1, "lora_down", 0), ("lora_mid", 0, "lora_up", 1)]
    elif family == "loha":
        if "hada_t1" in t:
            checks = [
                ("hada_t1", 0, "hada_w1_a", 0),
                ("hada_t1", 1, "hada_w1_b", 0),
                ("hada_t2", 0, "hada_w2_a", 0),
                ("hada_t2", 1, "hada_w2_b", 0),
            ]
        else:
            checks = [
                ("hada_w1_a", 1, "hada_w1_b", 0),
                ("hada_w2_a", 1, "hada_w2_b", 0),
                ("hada_w1_a", 0, "hada_w2_a", 0),
                ("hada_w1_b", 1, "hada_w2_b", 1),
            ]
    elif family == "lokr":
        checks = [("lokr_w1_a", 1, "lokr_w1_b", 0)]
        if "lokr_t2" in t:
            checks += [("lokr_t2", 0, "lokr_w2_a", 0), ("lokr_t2", 1, "lokr_w2_b", 0)]
        else:
            checks += [("lokr_w2_a", 1, "lokr_w2_b", 0)]
    scale = t.get("dora_scale")
    if family == "lora" and scale is not None:
        out, inner = t["lora_up"].shape[0], t["lora_down"].shape[1]
        per_out = scale.shape[0] == out and scale.numel() == out
        per_in = scale.dim() > 1 and scale.shape[0] == 1 and scale.numel() == inner
        if not (per_out or per_in):
            raise AdapterFormatError(
                f"{path}: dora_scale shape {tuple(scale.shape)} is neither per output ({out}) nor "
                f"per input ({inner}) channel"
            )
    for a, da, b, db in checks:
        if (
            a in t
            and b in t
            and (t[a].dim() <= da or t[b].dim() <= db or t[a].shape[da] != t[b].shape[db])
        ):
            raise AdapterFormatError(
                f"{path}: {a} shape {tuple(t[a].shape)} does not fit {b} shape {tuple(t[b].shape)}"
            )
