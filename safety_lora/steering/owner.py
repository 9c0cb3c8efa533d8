"""The owner of the safety steering on a pipeline: adapters on its UNet, SLD guidance per call.

:class:`Steering` loads the policy's adapters once (files, or closed-form edits solved for
this pipeline's model and cached, see :mod:`safety_lora.closed_form`), and for every call sets
their strengths explicitly (diffusers leaves stale scales behind after ``fuse_lora``/
``unfuse_lora`` and ``cross_attention_kwargs={"scale": ...}``), optionally only inside a
timestep window, under one lock, and restores the resting state afterwards. Before every
call it re-asserts that the adapters are present, enabled and fused only by itself, so a
user's ``disable_lora()``, ``set_adapters()`` or ``fuse_lora()`` on the inner pipeline cannot
silently remove safety.
SLD guidance (``steering.guidance``) is a hook installed for one call at that call's strength,
and not at all at strength 0; so is text-embedding steering (``steering.text``, see
:mod:`safety_lora.steering.embedding`), whose concept directions are encoded once here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import torch

from safety_lora.adapters import load_adapter
from safety_lora.adapters.loading import remove_adapter, unload_adapters
from safety_lora.adapters.names import denoiser_part
from safety_lora.policies.schema import AdapterSpec
from safety_lora.steering.embedding import EmbeddingSteering
from safety_lora.steering.embedding import check_pipeline as check_text_pipeline
from safety_lora.steering.methods import adapter_file

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline
    from peft.tuners.tuners_utils import BaseTunerLayer

    from safety_lora.policies.schema import SteeringPolicy

__all__ = ["Steering", "SteeringError"]

logger = logging.getLogger(__name__)

#: The pipeline components a steering file's text-encoder part can go on.
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")

StepCallback = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


class SteeringError(RuntimeError):
    """The safety adapters were changed on the inner pipeline in a way that cannot be undone."""


class Steering:
    """Loads ``config.adapters`` onto ``pipe.unet`` (or ``pipe.transformer``: SD3, Flux,
    PixArt) and applies them (and SLD and text-embedding steering, UNet pipelines only) per
    call.

    A file's text-encoder part goes onto the pipeline's ``text_encoder``/``text_encoder_2``
    at the same strength (for the whole call: text is encoded before the steps), or is
    skipped with the entry's ``unet_only`` and listed in :attr:`skipped_text_encoders`.

    :attr:`sha256` holds each adapter's file hash (of the bytes loaded), :attr:`closed_form`
    each solved adapter's cache key.

    ``dynamic`` mode sets each request's strengths on the LoRA layers (optionally only for
    steps inside ``config.window``). ``fused`` mode folds the base strengths into the UNet
    weights once and takes peft's wrappers out of the forward path, so the UNet runs exactly
    its base modules (no per-step cost); a layer that also holds a user's adapter stays
    unfused, as peft skips a merged layer's other adapters. A request that needs other
    strengths (prompt risk, escalation) is run unfused at those strengths and the weights are
    re-fused afterwards. Adapters the user loaded keep their active state next to ours.
    :meth:`close` unfuses and removes the adapters, leaving the pipeline as it was.
    """

    def __init__(self, pipe: DiffusionPipeline, config: SteeringPolicy) -> None:
        if config.mode == "fused" and tuple(config.window) != (0.0, 1.0):
            raise ValueError(
                f"`window` must be (0.0, 1.0) in fused mode (fused weights cannot switch per "
                f"step), got {tuple(config.window)}"
            )
        #: The denoiser the adapters go on: ``pipe.unet``, or ``pipe.transformer`` (SD3, Flux).
        self.part = denoiser_part(pipe)
        unet: Any = getattr(pipe, self.part, None)
        self.denoiser: Any = unet
        if config.adapters and unet is None:
            raise ValueError(
                f"steering adapters need a pipeline with a `unet` or a `transformer`, got "
                f"{type(pipe)}"
            )
        if hasattr(unet, "_orig_mod"):  # torch.compile's wrapper: its module names differ
            raise ValueError(
                f"`pipe.{self.part}` is torch.compile'd: wrap the pipeline first, then compile "
                f"(`safe = SafePipeline(pipe, policy); pipe.{self.part} = "
                f"torch.compile(pipe.{self.part})`)"
            )
        self.pipe: Any = pipe
        self.mode = config.mode
        self.window = (float(config.window[0]), float(config.window[1]))
        if config.guidance is not None:
            from safety_lora.steering.sld import check_pipeline

            check_pipeline(pipe)
        if config.text is not None:
            check_text_pipeline(pipe)
        self.base_scales = {a.adapter_name: float(a.scale) for a in config.adapters}
        self.guidance = config.guidance
        self.text = config.text
        #: The extra UNet passes SLD guidance has run so far, and their wall time (its cost).
        self.guidance_passes = 0
        self.guidance_seconds = 0.0
        self.sha256: dict[str, str] = {}
        self.closed_form: dict[str, str] = {}
        self.lock = threading.RLock()
        self._fused_at: dict[str, float] | None = None
        #: The layers our adapters are merged into, and those wrappers taken out of the forward
        #: path: (parent module, attribute, wrapper).
        self._fused: list[BaseTunerLayer] = []
        self._swapped: list[tuple[torch.nn.Module, str, BaseTunerLayer]] = []
        #: Per adapter: the text encoders its file's text-encoder part is on, and those skipped.
        self.text_encoders: dict[str, tuple[str, ...]] = {}
        self.skipped_text_encoders: dict[str, tuple[str, ...]] = {}
        existing = set(getattr(unet, "peft_config", None) or {})
        encoders = {
            c: m for c in TEXT_ENCODERS if isinstance(m := getattr(pipe, c, None), torch.nn.Module)
        }
        # peft's injection leaves only the new adapter active: note what the user had active
        user_active = [
            (m, list(m.active_adapters))
            for model in (unet, *encoders.values())
            for m in _adapter_layers(model)
        ]
        for spec in config.adapters:
            name = spec.adapter_name
            if name in existing:
                raise ValueError(f"adapter name {name!r} is already loaded on `pipe.{self.part}`")
            source = adapter_file(pipe, spec)
            if source.solve_key is not None:
                self.closed_form[name] = source.solve_key
            # Any format the project reads (PEFT/diffusers, kohya, LyCORIS LoHa/LoKr/full),
            # checked against the UNet (and text encoders, for a file's text-encoder part),
            # loaded from the very bytes whose sha256 was checked.
            unet_only = isinstance(spec, AdapterSpec) and spec.unet_only
            info = load_adapter(
                unet,
                source.path,
                adapter_name=name,
                sha256=source.pin,
                text_encoders=encoders,
                unet_only=unet_only,
            )
            self.sha256[name] = info.sha256 or ""
            self.text_encoders[name] = tuple(info.text_encoders)
            if info.skipped_text_encoders:
                self.skipped_text_encoders[name] = info.skipped_text_encoders
                logger.info(
                    "steering adapter %s: text-encoder parts %s skipped (unet_only)",
                    name,
                    ", ".join(info.skipped_text_encoders),
                )
        self._models: list[Any] = [unet] if config.adapters else []
        self._models += [encoders[c] for c in TEXT_ENCODERS if self._on(c)]
        self._layers: list[BaseTunerLayer] = self._collect_layers()
        on_unet = {id(m) for m in _adapter_layers(unet)} if config.adapters else set()
        self._text_layers = [m for m in self._layers if id(m) not in on_unet]
        for layer, active in user_active:
            layer.set_adapter([*active, *(n for n in self.names if n in layer.scaling)])
        with self.lock:
            self._activate()
            self._rest()
        #: The text-embedding steering's concept directions, from the encoder at rest.
        self.embedding: EmbeddingSteering | None = None
        if config.text is not None:
            self.embedding = EmbeddingSteering(
                pipe,
                concepts=config.text.concepts,
                anchor=config.text.anchor,
                threshold=config.text.threshold,
            )
        #: The user's own adapters on the UNet, screened against the policy's concepts: name
        #: -> the measurement, the action taken and the strength factor applied.
        self.screened: dict[str, dict[str, Any]] = {}
        if self.part == "unet":
            self._screen(sorted(existing), config)

    def _screen(self, users: list[str], config: SteeringPolicy) -> None:
        """Screen each user adapter (:mod:`safety_lora.steering.screening`) and apply the
        policy's ``user_adapters`` rule: refuse (our adapters removed again, then an error
        naming it), cap its strength at ``max_shift``, or allow; recorded in :attr:`screened`."""
        from safety_lora.steering.screening import policy_probes, screen

        rule = config.user_adapters
        probes = policy_probes(config)
        if rule is None or not probes or not users:
            return
        for name in users:
            result = screen(self.pipe, name, probes, measure=rule.measure)
            worst = result.worst
            shift = worst.shift if worst is not None else 0.0
            record: dict[str, Any] = {**result.to_dict(), "action": "allow", "factor": 1.0}
            if shift >= rule.max_shift and rule.action == "refuse":
                self.close()
                assert worst is not None
                raise SteeringError(
                    f"your adapter {name!r} moves the model toward {worst.concept!r}, which the "
                    f"policy erases, by {shift:.2f} (steering.user_adapters.max_shift "
                    f"{rule.max_shift}; worst probe {worst.worst_probe!r}): refused. Remove it "
                    f"(`pipe.delete_adapters({name!r})`), or set steering.user_adapters.action "
                    f"to cap"
                )
            if shift >= rule.max_shift and rule.action == "cap":
                factor = rule.max_shift / shift
                for layer in _adapter_layers(self.denoiser):
                    if name in layer.scaling:
                        layer.scaling[name] *= factor
                record.update(action="cap", factor=round(factor, 4))
            self.screened[name] = record

    @property
    def names(self) -> tuple[str, ...]:
        """The adapter names this object owns on the denoiser."""
        return tuple(self.base_scales)

    def _on(self, component: str) -> bool:
        """Whether any of our adapters has a part on this text encoder."""
        return any(component in parts for parts in self.text_encoders.values())

    def _collect_layers(self) -> list[BaseTunerLayer]:
        """Our adapters' layers on the UNet and on the text encoders they have parts on."""
        layers = [m for model in self._models for m in _adapter_layers(model)]
        return [m for m in layers if any(n in m.scaling for n in self.base_scales)]

    def _part_on(self, name: str, model: Any) -> bool:
        """Whether adapter ``name`` has a part on text encoder ``model``."""
        return any(getattr(self.pipe, c, None) is model for c in self.text_encoders.get(name, ()))

    # -- state -----------------------------------------------------------------------------

    def _set(
        self,
        scales: Mapping[str, float],
        divisor: float = 1.0,
        layers: list[BaseTunerLayer] | None = None,
    ) -> None:
        """Set our adapters' strengths on every layer (``/divisor`` undoes a user's lora scale:
        diffusers multiplies it into the UNet's and the text encoders' layers alike).
        """
        for layer in self._layers if layers is None else layers:
            for name, value in scales.items():
                layer.set_scale(name, value / divisor)

    def _activate(self) -> None:
        """Make our adapters active on each of their layers, next to whatever adapters the user
        has active there (per layer, with peft: a denoiser without diffusers' adapter API,
        such as PixArt's, is steered like the rest)."""
        for layer in self._layers:
            on = list(layer.active_adapters)
            missing = [n for n in self.names if n in layer.scaling and n not in on]
            if missing:
                layer.set_adapter([*on, *missing])

    def _merged(self) -> set[str]:
        return {a for layer in self._layers for a in layer.merged_adapters}

    def _fuse(self, scales: Mapping[str, float]) -> None:
        """Merge our adapters at ``scales`` into every layer that holds only ours.

        A layer that also holds a user's adapter stays unfused at ``scales``: peft's forward of a
        merged layer skips the layer's unmerged adapters, the user's too.
        """
        self._set(scales)
        ours = set(self.names)
        self._fused = [m for m in self._layers if set(m.scaling) <= ours]
        for layer in self._fused:
            layer.merge(adapter_names=[n for n in self.names if n in layer.scaling])
        self._fused_at = dict(scales)
        self._swap_out()

    def _swap_out(self) -> None:
        """Take the fused wrappers out of the forward path.

        A merged peft layer still runs its own Python around the base layer's; without it,
        fused steering runs exactly the base model's modules (same cost as the base).
        """
        fused = {id(m) for m in self._fused}
        for model in self._models:
            for parent in list(model.modules()):
                for attr, child in list(parent.named_children()):
                    if id(child) in fused:
                        setattr(parent, attr, child.base_layer)
                        self._swapped.append((parent, attr, child))

    def _swap_in(self) -> None:
        """Put the swapped-out wrappers back (under any adapter a user has since put around
        the base layer, so that theirs keeps working)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        while self._swapped:
            parent, attr, wrapper = self._swapped.pop()
            holder, name = parent, attr
            while (current := getattr(holder, name)) is not wrapper.base_layer:
                if not isinstance(current, BaseTunerLayer):
                    raise SteeringError(
                        f"`{type(parent).__name__}.{attr}` on the pipeline's {self.part} was "
                        f"replaced by a {type(current).__name__} while the safety adapters were "
                        f"fused into it; build a new SafePipeline"
                    )
                holder, name = current, "base_layer"
            setattr(holder, name, wrapper)

    def _unfuse(self) -> None:
        self._swap_in()
        # peft subtracts the delta at the *current* scaling: put back the one we fused at.
        if self._fused_at is not None:
            self._set(self._fused_at)
        for layer in self._layers:
            if layer.merged:
                layer.unmerge()
        self._fused_at, self._fused = None, []

    def _unfused_layers(self) -> list[BaseTunerLayer]:
        """Our layers that run their adapters at call time (all of them unless fused)."""
        return [m for m in self._layers if not m.merged]

    def _rest(self) -> None:
        """The resting state: base strengths, fused in fused mode."""
        if self.mode == "fused":
            if self._fused_at != self.base_scales:
                self._unfuse()
                self._fuse(self.base_scales)
            self._set(self.base_scales, layers=self._unfused_layers())
        else:
            self._set(self.base_scales)

    def assert_state(self) -> None:
        """Re-assert our adapters: present, active, enabled, fused only by us (call under lock).

        Our layers are checked as objects, so fused wrappers stay out of the forward path.
        """
        if not self._layers:
            return
        for model in self._models:
            config = getattr(model, "peft_config", None) or {}
            names = [n for n in self.names if model is self.denoiser or self._part_on(n, model)]
            missing = [n for n in names if n not in config]
            if missing:
                raise SteeringError(
                    f"safety adapters {missing} were removed from the pipeline's "
                    f"{type(model).__name__} (delete_adapters or unload_lora_weights on the "
                    f"inner pipeline); build a new SafePipeline"
                )
        merged = self._merged()
        foreign = sorted(merged - set(self.names))
        if foreign:
            raise SteeringError(
                f"`pipe.{self.part}` has adapters {foreign} fused into its weights by someone "
                f"else; the "
                f"safety layer cannot account for them. Call `pipe.unfuse_lora()` first"
            )
        fused = {id(m) for m in self._fused}
        if any(layer.merged != (id(layer) in fused) for layer in self._layers):
            logger.warning("safety adapters were fused/unfused on the inner pipeline; restoring")
            self._unfuse()
        disabled = [layer for layer in self._layers if layer.disable_adapters]
        if disabled:
            logger.warning("safety adapters were disabled on the inner pipeline; re-enabling")
            for layer in disabled:
                layer.enable_adapters(True)
        self._activate()
        if self.mode == "fused" and self._fused_at is None:
            self._fuse(self.base_scales)

    # -- one call --------------------------------------------------------------------------

    @contextmanager
    def at(self, scales: Mapping[str, float]) -> Iterator[None]:
        """The pipeline steered at ``scales`` inside the block (others at their base strength).

        ``{name: 0.0}`` runs the base model through the same path as a request at strength 0:
        how the workbench switches a method off.
        """
        with self.apply(scales):
            yield

    @contextmanager
    def apply(
        self,
        scales: Mapping[str, float],
        kwargs: dict[str, Any] | None = None,
        *,
        pipe: Any = None,
    ) -> Iterator[dict[str, Any]]:
        """Hold the lock, set ``scales`` for one pipeline call, yield its kwargs, then restore.

        ``pipe`` is the pipeline about to be called, when it is not the one this owner was
        built on but shares its denoiser (``from_pipe``: image-to-image, inpainting).

        The yielded kwargs carry our step callback when a window is set (chained after the
        user's ``callback_on_step_end``, whose returned tensors are still honoured). SLD
        guidance and text-embedding steering, when the policy has them, are on during the
        block at ``scales[their name]`` (the text steering installed after SLD has encoded its
        concept, which it leaves as it is).
        """
        kwargs = dict(kwargs or {})
        hooks = [m for m in (self.guidance, self.text) if m is not None]
        known = (*self.names, *(m.adapter_name for m in hooks))
        unknown = sorted(set(scales) - set(known))
        if unknown:
            raise ValueError(f"`scales` names unknown steering {unknown}; known: {known}")
        user_scale = float((kwargs.get("cross_attention_kwargs") or {}).get("scale", 1.0))
        if self._layers and user_scale == 0.0:
            raise ValueError(
                "`cross_attention_kwargs['scale']` of 0 would switch the safety adapters off; "
                "disable your own adapters with `pipe.set_adapters(...)` instead"
            )
        wanted = {n: float(scales.get(n, s)) for n, s in self.base_scales.items()}
        with self.lock, ExitStack() as stack:
            self.assert_state()
            try:
                if self.mode == "fused" and wanted != self._fused_at:
                    self._unfuse()
                if self._fused_at is not None:
                    self._set(wanted, user_scale, self._unfused_layers())
                else:
                    off = dict.fromkeys(wanted, 0.0)
                    self._set(wanted if self.window[0] == 0.0 else off, user_scale)
                    # text encoders run once, before the steps: the window is the UNet's
                    self._set(wanted, user_scale, self._text_layers)
                    if self.window != (0.0, 1.0) and self._layers:
                        kwargs = self._with_window(kwargs, wanted, off, user_scale)
                if self.guidance is not None:
                    strength = float(scales.get(self.guidance.adapter_name, self.guidance.scale))
                    hook = stack.enter_context(self._sld(strength, pipe or self.pipe))
                    stack.callback(self._count, hook)
                if self.text is not None and self.embedding is not None:
                    strength = float(scales.get(self.text.adapter_name, self.text.scale))
                    stack.enter_context(self.embedding.on(pipe or self.pipe, strength))
                yield kwargs
            finally:
                self._rest()

    def _count(self, hook: Any) -> None:
        """Add one call's extra UNet passes (and their seconds) to the guidance totals."""
        self.guidance_passes += hook.extra_calls
        self.guidance_seconds += hook.extra_seconds

    def _sld(self, strength: float, pipe: Any) -> Any:
        """SLD guidance at ``strength`` for one call of ``pipe`` (nothing at strength 0)."""
        from safety_lora.steering.sld import SafetyGuidance, sld_preset

        assert self.guidance is not None
        return SafetyGuidance(
            pipe,
            concept=self.guidance.concept,
            config=sld_preset(self.guidance.preset),
            strength=strength,
        )

    def _with_window(
        self,
        kwargs: dict[str, Any],
        on: Mapping[str, float],
        off: Mapping[str, float],
        divisor: float,
    ) -> dict[str, Any]:
        """Chain a step-end callback that switches strengths for the next step (i+1)/N."""
        user = kwargs.get("callback_on_step_end")
        lo, hi = self.window
        out = dict(kwargs)
        if user is not None and hasattr(user, "tensor_inputs"):
            out["callback_on_step_end_tensor_inputs"] = list(user.tensor_inputs)

        def step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
            result = user(pipe, step, timestep, tensors) if user is not None else tensors
            total = max(1, int(getattr(pipe, "num_timesteps", 0) or 1))
            position = (step + 1) / total
            self._set(on if lo <= position < hi else off, divisor)
            return result

        out["callback_on_step_end"] = step_end
        return out

    def close(self) -> None:
        """Unfuse and remove our adapters (UNet and text encoders); the pipeline is as it was:
        where no adapter is left on a model, peft's wrappers go too."""
        with self.lock:
            if not self._layers:
                return
            self._unfuse()
            for model in self._models:
                for name in self.names:
                    remove_adapter(model, name)
                if not getattr(model, "peft_config", None):
                    unload_adapters(model)
            self._layers = []


def _adapter_layers(unet: Any) -> list[Any]:
    """Every peft adapter layer on ``unet`` (LoRA and LyCORIS layers alike)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer) and hasattr(m, "scaling")]
