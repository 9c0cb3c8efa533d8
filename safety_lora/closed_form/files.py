"""Closed-form edits as adapter files: the exact delta (LyCORIS ``full``) or a truncated LoRA.

Files carry the project's training metadata (``safety_lora.adapter``, ``.rank``, ``.alpha``,
``.target_modules``, ``.concepts``, ``.base_fingerprint`` ...) plus ``safety_lora.method =
closed-form``, the solve's ``safety_lora.closed_form`` config, its ``safety_lora.solve_key``
(the hash of everything the solve read, see :func:`edit_key`) and the SVD error, so
``inspect``, ``convert``, pins and per-request strength work as for any adapter.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from safety_lora.adapters import AdapterFormatError, Family, FormatName, write_adapter
from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.closed_form.solve import ClosedFormEdit, solve_inputs
from safety_lora.closed_form.states import EditInputs, gather

__all__ = [
    "EMBEDDED",
    "SOLVER_VERSION",
    "ErasureResult",
    "base_metadata",
    "edit_key",
    "erase",
    "write_edit",
]

#: What :func:`erase` may run on a solved edit before writing it: (pipe, inputs, edit, config).
Refine = Callable[[Any, EditInputs, ClosedFormEdit, ClosedFormConfig], ClosedFormEdit]
#: The base name recorded for the bundled concept-world model.
EMBEDDED = "embedded:concept_world"
#: Bumped whenever the solve's maths change, so cached edits are not reused across versions.
SOLVER_VERSION = "1"


@dataclass(frozen=True)
class ErasureResult:
    """What :func:`erase` wrote, how long the solve took and how exact the file is."""

    path: Path
    format: FormatName
    family: Family
    key: str
    seconds: float
    modules: int
    parameters: int
    module_errors: dict[str, float]
    overall_error: float
    adversarial_gaps: tuple[float, ...]


def edit_key(inputs: EditInputs, config: ClosedFormConfig) -> str:
    """sha256 of the solver version, the config and every state and weight the solve reads."""
    blob = f"{SOLVER_VERSION}:{config.digest()}:{inputs.fingerprint()}".encode()
    return hashlib.sha256(blob).hexdigest()


def write_edit(
    edit: ClosedFormEdit,
    path: str | Path,
    *,
    key: str,
    to: FormatName | None = None,
    base: dict[str, str] | None = None,
) -> ErasureResult:
    """Write ``edit`` at its config's ``rank``/``tolerance`` (exact without) in format ``to``.

    ``to`` defaults to ``lycoris`` for the exact delta and ``peft`` for a LoRA; the exact
    delta has no plain-LoRA layout, so kohya/peft need a rank. ``base`` adds metadata
    naming the base model (``{"base": ..., "base_fingerprint": ...}``).
    """
    config = edit.config
    fmt: FormatName = to or ("lycoris" if config.exact else "peft")
    if config.exact and fmt != "lycoris":
        raise AdapterFormatError(
            f"the exact closed-form delta is a full-rank (LyCORIS 'full') adapter; the {fmt} "
            f"format holds LoRA only: pass a rank or a tolerance (CLI: --rank, --tolerance) or "
            f"write lycoris"
        )
    state, errors, overall = edit.to_state(config.rank, tolerance=config.tolerance)
    ranks = sorted({r for r in (state.rank(p) for p in state.modules) if r is not None})
    info: dict[str, Any] = {
        "adapter": state.family,
        "rank": ranks[-1] if ranks else None,
        "alpha": "rank",  # every module's alpha is its rank: scale 1
        "target_modules": sorted(edit.modules),
        "method": "closed-form",
        "concepts": list(config.erase),
        "anchors": {c: config.anchor_of(c) for c in config.erase},
        "preserve": list(config.preserve),
        "closed_form": config.model_dump(mode="json"),
        "solve_key": key,
        "solve_seconds": round(edit.seconds, 4),
        "svd_error": overall,
        **(base or {}),
    }
    state.metadata.update(
        {"safety_lora." + k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}
    )
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.safetensors")
    write_adapter(state, tmp, to=fmt)
    tmp.replace(path)
    return ErasureResult(
        path=path,
        format=fmt,
        family=state.family,
        key=key,
        seconds=edit.seconds,
        modules=len(state.modules),
        parameters=state.parameter_count(),
        module_errors=errors,
        overall_error=overall,
        adversarial_gaps=edit.adversarial_gaps,
    )


def base_metadata(pipe: Any, name: str) -> dict[str, str]:
    """The base model's ``name`` and its denoiser's fingerprint (as trained adapters record)."""
    from safety_lora.adapters.fingerprint import base_fingerprint
    from safety_lora.adapters.names import denoiser_part

    return {"base": name, "base_fingerprint": base_fingerprint(getattr(pipe, denoiser_part(pipe)))}


def erase(
    config: ClosedFormConfig,
    *,
    out: str | Path,
    pipe: Any = None,
    base: str | None = None,
    to: FormatName | None = None,
    device: str = "cpu",
    refine: Refine | None = None,
) -> ErasureResult:
    """Solve ``config`` on ``pipe`` (else the pipeline ``base`` names, else the embedded model)
    and write the adapter to ``out`` (``.safetensors``).

    ``refine`` changes the solved edit before it is written: the workbench's attack rounds
    (:func:`safety_lora.workbench.hardening.harden`), which a config with ``attack_rounds``
    needs.
    """
    if Path(out).suffix != ".safetensors":
        raise AdapterFormatError(f"`out` must end with .safetensors, got {str(out)!r}")
    if config.attack_rounds and refine is None:
        raise ValueError(
            f"`attack_rounds` {config.attack_rounds} run the attack harness: pass "
            f"`refine=safety_lora.workbench.hardening.harden` or use `safety-lora erase "
            f"--attack-rounds` (pip install 'safety-lora[workbench]')"
        )
    if pipe is None:
        from safety_lora.loading import load_pipeline

        pipe, _ = load_pipeline(base, device)
    began = time.perf_counter()
    inputs = gather(pipe, config.pairs(), config.preserve)
    edit = solve_inputs(inputs, config)
    if refine is not None:
        edit = refine(pipe, inputs, edit, config)
    edit = replace(edit, seconds=time.perf_counter() - began)  # encoding counts too
    return write_edit(
        edit, out, key=edit_key(inputs, config), to=to, base=base_metadata(pipe, base or EMBEDDED)
    )
