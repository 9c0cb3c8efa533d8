"""``SafePipeline``: a drop-in wrapper enforcing a policy around a diffusers pipeline.

One call: each prompt is checked (refused prompts are not generated), the rest are
generated under the policy's steering strengths, every image is judged on its own, images
judged ``regenerate`` are generated again with a derived seed and the next strength on the
escalation ladder, and the final decisions are applied (allow / blur / replace / block) and
written to the audit log. Admitting the prompts, judging, rendering and auditing go through
the pipeline's :class:`~safety_lora.guard.SafetyGuard`, the one path every entry point shares.

Seeds for regeneration: attempt 1 uses the caller's generator(s) unchanged. Image ``i`` of
the call (prompt-major order, as diffusers orders its outputs) has a base seed ``s_i``: the
``initial_seed()`` of ``generator[i]`` for a generator list, of the single ``generator``
otherwise, or a seed drawn by the wrapper when no generator was passed (then attempt 1 runs
with ``torch.Generator().manual_seed(s_i)``, one generator per image under ``seed: same``).
With the policy's ``escalation.seed: same`` (the default), attempt ``k >= 2`` runs from the
state image ``i``'s generator had before attempt 1 (and the caller's latents for it): the same
initial noise, steered harder, so the picture keeps its composition; this needs one generator
per image (a list, or one image per call), and an image sharing one generator with others
falls back to ``derived``, saying so in its reasons. With ``derived``, attempt ``k`` runs with
``manual_seed(derive_seed(s_i, i, k))``. Either way the same request regenerates the same way.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import torch
from diffusers.utils.outputs import BaseOutput
from PIL import Image

from safety_lora.classifiers.prompt_views import windows_from_pipeline
from safety_lora.decisions import Decision, PromptDecision, new_request_id
from safety_lora.guard import SafetyGuard
from safety_lora.inputs import InputImage, find_inputs, owners, substitute
from safety_lora.internals import without_safety_checker
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy
from safety_lora.seeds import hashed_seed
from safety_lora.steering import Steering
from safety_lora.taxonomy import Action

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

__all__ = ["SafePipeline", "SafePipelineOutput", "SafeTuple", "derive_seed"]

#: Arguments holding one entry per prompt (sliced when prompts are generated apart).
_PER_PROMPT = (
    "prompt",
    "prompt_2",
    "negative_prompt",
    "negative_prompt_2",
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
    "image",
    "mask_image",
    "control_image",
)
#: Arguments holding one entry per image.
_PER_IMAGE = ("generator", "latents")


def derive_seed(seed: int, index: int, attempt: int) -> int:
    """The seed of image ``index``'s ``attempt`` (>= 2): a hash of (seed, index, attempt)."""
    return hashed_seed("safety-lora", seed, index, attempt)


@dataclass
class SafePipelineOutput(BaseOutput):  # type: ignore[misc]
    """What the policy lets through, diffusers-style, plus one explained decision per image.

    ``images`` has the caller's ``output_type`` (list of PIL images, ``np.ndarray`` or
    ``torch.Tensor``); ``nsfw_content_detected[i]`` is ``decisions[i].flagged``.
    """

    images: list[Image.Image] | np.ndarray | torch.Tensor
    nsfw_content_detected: list[bool]
    decisions: list[Decision]
    #: The verdicts on the call's input images (image-to-image, inpainting...), in argument
    #: order; an input blurred or replaced here was generated from as rendered.
    input_decisions: list[Decision] = field(default_factory=list)


class SafeTuple(tuple[Any, ...]):
    """The ``return_dict=False`` result: the wrapped pipeline's tuple, plus ``.decisions``.

    It unpacks exactly like the inner pipeline's tuple (``images, nsfw = ...`` for SD,
    ``(images,)`` for SDXL), so existing code keeps working.
    """

    decisions: list[Decision]


@dataclass
class _Slot:
    """One requested image while it is being generated and judged."""

    index: int
    prompt: int
    seed: int
    native: Any = None
    decision: Decision | None = None
    scales: tuple[dict[str, float], ...] = ()
    #: Its generator's state before attempt 1 (``seed: same``), when it has a generator alone.
    state: torch.Tensor | None = None
    #: What set each regeneration's strengths (added to the final decision's reasons).
    notes: tuple[str, ...] = ()


class SafePipeline:
    """Wraps ``pipe`` so every call is checked, steered, judged and audited by ``policy``.

    ``pipe.safety_checker`` (when present) is switched off for the duration of each call,
    since the policy's classifiers judge; its class name is kept in
    :attr:`disabled_safety_checker`. The adapters named in ``policy.steering`` are loaded
    onto ``pipe.unet`` (or ``pipe.transformer``: SD3, Flux) now (closed-form entries solved
    for this model first, or taken from the cache) and owned by :attr:`steering`;
    :meth:`close` removes them. :attr:`guard` admits, judges, renders and audits.
    """

    def __init__(
        self,
        pipe: DiffusionPipeline,
        policy: Policy | str | Path,
        *,
        engine: PolicyEngine | None = None,
    ) -> None:
        if not callable(pipe):
            raise ValueError(f"`pipe` must be a callable diffusers pipeline, got {type(pipe)}")
        if isinstance(policy, (str, Path)):
            policy = Policy.load(policy)
        if not isinstance(policy, Policy):
            raise TypeError(f"`policy` must be a Policy, preset name or path, got {type(policy)}")
        if engine is not None and engine.policy is not policy:
            raise ValueError("`engine` was built for another policy than `policy`")
        self.pipe: Any = pipe
        self.policy = policy
        self.engine = engine or PolicyEngine(policy)
        # the prompt check reads what this pipeline's text encoders read (their token windows)
        self.engine.prompt_windows = windows_from_pipeline(pipe)
        checker = getattr(pipe, "safety_checker", None)
        self.disabled_safety_checker: str | None = (
            type(checker).__name__ if checker is not None else None
        )
        self.steering = Steering(pipe, policy.steering)
        self.guard = SafetyGuard(
            policy,
            engine=self.engine,
            adapters=self.steering.sha256,
            closed_form=self.steering.closed_form,
            user_adapters=self.steering.screened,
        )
        self._signature, self._var_keyword = _call_signature(pipe)

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | Path, policy: Policy | str | Path, **kwargs: Any
    ) -> SafePipeline:
        """``DiffusionPipeline.from_pretrained(path_or_id, **kwargs)``, wrapped."""
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(path_or_id, **kwargs)  # type: ignore[no-untyped-call]
        return cls(pipe, policy)

    def derive(self, pipe: DiffusionPipeline) -> SafePipeline:
        """This wrapper around ``pipe``, another pipeline of the same components (diffusers'
        ``from_pipe``: image-to-image, inpainting, ControlNet), sharing this one's steering
        (adapters loaded once, one lock) and guard. :meth:`close` on either closes both."""
        part = self.steering.part
        if getattr(pipe, part, None) is not self.steering.denoiser:
            raise ValueError(
                f"`pipe` must share this pipeline's `{part}` (make it with "
                f"`{type(pipe).__name__}.from_pipe(safe.pipe)`), got another one"
            )
        if self.steering.guidance is not None:
            from safety_lora.steering.sld import check_pipeline

            check_pipeline(pipe)
        derived = object.__new__(SafePipeline)
        derived.__dict__.update(self.__dict__)
        derived.pipe = pipe
        derived._signature, derived._var_keyword = _call_signature(pipe)
        checker = getattr(pipe, "safety_checker", None)
        derived.disabled_safety_checker = type(checker).__name__ if checker is not None else None
        return derived

    def close(self) -> None:
        """Remove the safety adapters from the denoiser and text encoders (unfusing first)."""
        self.steering.close()

    def __getattr__(self, name: str) -> Any:
        # Read-only conveniences (device, components, config...) come from the inner pipe.
        if name == "pipe":
            raise AttributeError(name)
        return getattr(self.pipe, name)

    # -- one call --------------------------------------------------------------------------

    @overload
    def __call__(
        self,
        *args: Any,
        return_dict: Literal[True] = ...,
        safety_request_id: str | None = ...,
        safety_prompt_checks: Sequence[PromptDecision] | None = ...,
        **kwargs: Any,
    ) -> SafePipelineOutput: ...
    @overload
    def __call__(
        self,
        *args: Any,
        return_dict: Literal[False],
        safety_request_id: str | None = ...,
        safety_prompt_checks: Sequence[PromptDecision] | None = ...,
        **kwargs: Any,
    ) -> SafeTuple: ...

    def __call__(
        self,
        *args: Any,
        return_dict: bool = True,
        safety_request_id: str | None = None,
        safety_prompt_checks: Sequence[PromptDecision] | None = None,
        **kwargs: Any,
    ) -> SafePipelineOutput | SafeTuple:
        """Call the wrapped pipeline with the same arguments, under the policy.

        ``safety_request_id`` (not passed to the pipeline) tags every decision and audit line of
        this call, e.g. with an HTTP request's id; a fresh one is made when it is None.
        ``safety_prompt_checks``: this policy's decisions on the call's prompts, one per prompt,
        when the caller checked them already (the service); each must be for its very prompt.
        """
        call = dict(self._signature.bind_partial(*args, **kwargs).arguments)
        call.update(call.pop(self._var_keyword, None) or {})
        output_type = call.get("output_type", "pil") or "pil"
        prompts = self._prompts(call)
        inputs = find_inputs(call)
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}")
        per = int(call.get("num_images_per_prompt") or 1)
        request_id = safety_request_id or new_request_id()
        checks = self.guard.admit(prompts, request_id=request_id, checked=safety_prompt_checks)
        seeds, states = self._seeds(call, len(prompts) * per)
        slots = [
            _Slot(index=i, prompt=i // per, seed=seeds[i], state=states[i])
            for i in range(len(seeds))
        ]
        refused = {p for p, pd in enumerate(checks) if pd.refused}
        for p in refused:
            refusals = self.guard.refusals(checks[p], per)
            for slot, decision in zip(slots[p * per : (p + 1) * per], refusals, strict=True):
                slot.decision = decision
        verdicts: list[Decision] = []
        if inputs and len(refused) < len(prompts):
            verdicts = self._check_inputs(call, inputs, slots, refused, prompts, request_id)
        has_nsfw = self._generate_first(call, slots, checks, refused, per, request_id)
        self._escalate(call, slots, checks, request_id)
        images = self._finish(slots, prompts, call, output_type)
        decisions = [s.decision for s in slots if s.decision is not None]
        if not return_dict:
            result = SafeTuple((images, [d.flagged for d in decisions]) if has_nsfw else (images,))
            result.decisions = decisions
            return result
        return SafePipelineOutput(
            images=images,
            nsfw_content_detected=[d.flagged for d in decisions],
            decisions=decisions,
            input_decisions=verdicts,
        )

    def _prompts(self, call: dict[str, Any]) -> list[str | None]:
        prompt = call.get("prompt")
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt, (list, tuple)):
            return list(prompt)
        if prompt is not None:
            raise ValueError(f"`prompt` must be a string or a list of strings, got {type(prompt)}")
        if self.engine.prompt_classifiers:
            raise ValueError(
                "`prompt` is required: the policy checks prompt text, which `prompt_embeds` hide"
            )
        embeds = call.get("prompt_embeds")
        return [None] * (int(embeds.shape[0]) if isinstance(embeds, torch.Tensor) else 1)

    def _check_inputs(
        self,
        call: dict[str, Any],
        inputs: list[InputImage],
        slots: list[_Slot],
        refused: set[int],
        prompts: list[str | None],
        request_id: str,
    ) -> list[Decision]:
        """Judge the call's input images: a refused one refuses the prompts it serves (their
        slots decided, ``refused`` extended); blurred/replaced ones go into ``call``. Returns
        the verdicts."""
        verdicts = self.guard.check_inputs(
            [(item.name, item.image) for item in inputs],
            prompt=prompts[0] if len(prompts) == 1 else None,
            request_id=request_id,
        )
        per = len(slots) // len(prompts)
        replacements = {}
        for item, verdict in zip(inputs, verdicts, strict=True):
            if verdict.action is Action.BLOCK:
                for p in owners(item, call, len(prompts)):
                    if p in refused:
                        continue
                    refused.add(p)
                    refusals = self.guard.input_refusals(verdict, per)
                    for slot, decision in zip(
                        slots[p * per : (p + 1) * per], refusals, strict=True
                    ):
                        slot.decision = decision
            elif verdict.action is not Action.ALLOW:
                replacements[item.argument, item.path] = self.guard.render(item.image, verdict)
        substitute(call, replacements)
        return verdicts

    def _seeds(self, call: dict[str, Any], n: int) -> tuple[list[int], list[torch.Tensor | None]]:
        """Each image's base seed and, under ``seed: same``, its generator's state where it has
        a generator of its own (see the module docstring); installs generators when none was
        given."""
        same = self.policy.escalation.seed == "same"
        generator = call.get("generator")
        if generator is None:
            seed = secrets.randbits(63)
            if same and n > 1:
                seeds = [derive_seed(seed, i, 1) for i in range(n)]
                call["generator"] = [torch.Generator().manual_seed(s) for s in seeds]
                return seeds, [g.get_state() for g in call["generator"]]
            generator = call["generator"] = torch.Generator().manual_seed(seed)
        if isinstance(generator, (list, tuple)):
            if len(generator) != n:
                raise ValueError(f"`generator` is a list of {len(generator)}, expected {n} images")
            states = [g.get_state() if same else None for g in generator]
            return [int(g.initial_seed()) for g in generator], states
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                f"`generator` must be a torch.Generator or a list of them, got {type(generator)}"
            )
        state = generator.get_state() if same and n == 1 else None
        return [int(generator.initial_seed())] * n, [state] * n

    @contextmanager
    def _one_call(self, call: dict[str, Any], scales: dict[str, float]) -> Iterator[dict[str, Any]]:
        """Everything the wrapper changes on the pipeline for one inner call, restored after:
        adapters, strengths and step callbacks (under the steering lock), and the pipeline's
        own safety checker off (the policy judges instead). Yields the call's kwargs."""
        steer = self.steering.apply(scales, call, pipe=self.pipe)
        with steer as kwargs, without_safety_checker(self.pipe):
            yield kwargs

    def _run(self, call: dict[str, Any], scales: dict[str, float]) -> tuple[list[Any], bool]:
        """One inner pipeline call under the lock: native per-image outputs, has-nsfw-field."""
        with self._one_call(call, scales) as kwargs:
            out = self.pipe(**kwargs, return_dict=True)
        images = out.images if hasattr(out, "images") else out[0]
        native = list(images) if not isinstance(images, list) else images
        return native, hasattr(out, "nsfw_content_detected")

    def _judge(
        self,
        slots: Sequence[_Slot],
        pd: PromptDecision,
        attempt: int,
        scales: dict[str, float],
        request_id: str,
    ) -> None:
        # the slots judged together share the strengths of every attempt (grouped so)
        history = (*slots[0].scales, dict(scales))
        decisions = self.guard.judge(
            [_to_pil(s.native) for s in slots],
            prompt_decision=pd,
            attempt=attempt,
            can_regenerate=True,
            steering_scales=history,
            request_id=request_id,
        )
        for slot, decision in zip(slots, decisions, strict=True):
            if slot.notes:
                decision = replace(decision, reasons=(*decision.reasons, *slot.notes))
            slot.scales, slot.decision = history, decision

    def _generate_first(
        self,
        call: dict[str, Any],
        slots: list[_Slot],
        checks: list[PromptDecision],
        refused: set[int],
        per: int,
        request_id: str,
    ) -> bool:
        """Attempt 1: one inner call per group of prompts sharing the same strengths."""
        groups: dict[tuple[tuple[str, float], ...], list[int]] = {}
        for p, pd in enumerate(checks):
            if p not in refused:
                key = tuple(sorted(self.engine.steering_scales(pd, 1).items()))
                groups.setdefault(key, []).append(p)
        has_nsfw = hasattr(self.pipe, "safety_checker")
        for key, prompts in groups.items():
            scales = dict(key)
            sub = call if len(prompts) == len(checks) else _subset(call, prompts, per, len(checks))
            native, has_nsfw = self._run(sub, scales)
            group = [slots[p * per + j] for p in prompts for j in range(per)]
            if len(native) != len(group):
                raise RuntimeError(f"the pipeline returned {len(native)} images for {len(group)}")
            for slot, image in zip(group, native, strict=True):
                slot.native = image
            for p in prompts:
                own = group[prompts.index(p) * per : (prompts.index(p) + 1) * per]
                self._judge(own, checks[p], 1, scales, request_id)
        return has_nsfw

    def _escalate(
        self,
        call: dict[str, Any],
        slots: list[_Slot],
        checks: list[PromptDecision],
        request_id: str,
    ) -> None:
        """Attempts 2..max: regenerate flagged images, steered by their own evidence (the
        flagged scores) and the prompt's risk; one inner call per group of images of one
        prompt that share their strengths (now and before)."""
        n_prompts = len(checks)
        per = len(slots) // max(1, n_prompts)
        for attempt in range(2, self.policy.escalation.max_attempts + 1):
            groups: dict[tuple[Any, ...], list[_Slot]] = {}
            plans: dict[tuple[Any, ...], dict[str, float]] = {}
            for slot in slots:
                if not (slot.decision and slot.decision.action is Action.REGENERATE):
                    continue
                evidence = self.engine.evidence(slot.decision)
                plan = self.engine.steering_plan(checks[slot.prompt], attempt, evidence)
                scales = {name: strength for name, (strength, _) in plan.items()}
                past = tuple(tuple(sorted(h.items())) for h in slot.scales)
                key = (slot.prompt, past, tuple(sorted(scales.items())))
                groups.setdefault(key, []).append(slot)
                plans[key] = scales
                slot.notes += tuple(
                    f"attempt {attempt}: {name} at {strength:.2f} from {why}"
                    for name, (strength, why) in plan.items()
                )
            if not groups:
                return
            for key, mine in groups.items():
                self._regenerate(call, mine, key[0], attempt, plans[key], per, n_prompts)
                self._judge(mine, checks[key[0]], attempt, plans[key], request_id)

    def _regenerate(
        self,
        call: dict[str, Any],
        mine: list[_Slot],
        prompt: int,
        attempt: int,
        scales: dict[str, float],
        per: int,
        n_prompts: int,
    ) -> None:
        """One inner call for ``mine`` (images of ``prompt``) at ``scales``: from each image's
        own generator state (``seed: same``) or a derived seed."""
        sub = _subset(call, [prompt], per, n_prompts)
        sub["num_images_per_prompt"] = len(mine)
        device = _generator_device(call.get("generator"))
        in_place = [s.state is not None for s in mine]
        generators = []
        for slot in mine:
            generator = torch.Generator(device)
            if slot.state is not None:
                generators.append(generator.set_state(slot.state))
            else:
                generators.append(
                    generator.manual_seed(derive_seed(slot.seed, slot.index, attempt))
                )
                if self.policy.escalation.seed == "same":
                    slot.notes += (
                        f"attempt {attempt}: a new seed (the image shares its generator with "
                        f"others; pass one generator per image to regenerate in place)",
                    )
        sub["generator"] = generators
        latents = sub.pop("latents", None)  # fixed latents would regenerate the same image
        if all(in_place) and isinstance(latents, torch.Tensor):
            rows = [s.index - prompt * per for s in mine]
            sub["latents"] = latents[rows] if latents.shape[0] == per and per > 1 else latents
        native, _ = self._run(sub, scales)
        for slot, image in zip(mine, native, strict=True):
            slot.native = image

    def _finish(
        self,
        slots: list[_Slot],
        prompts: list[str | None],
        call: dict[str, Any],
        output_type: str,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """Apply each final decision, audit once per image, and assemble the output."""
        like = next((s.native for s in slots if s.native is not None), None)
        size = _to_pil(like).size if like is not None else self._default_size(call)
        out: list[Any] = []
        for slot in slots:
            assert slot.decision is not None
            if slot.native is None:  # refused prompt: nothing was generated
                pil = self.guard.render(Image.new("RGB", size), slot.decision)
                out.append(_from_pil(pil, output_type, like))
            elif slot.decision.action is Action.ALLOW:
                out.append(slot.native)
            else:
                pil = self.guard.render(_to_pil(slot.native), slot.decision)
                out.append(_from_pil(pil, output_type, slot.native))
        for p, prompt in enumerate(prompts):
            mine = [s for s in slots if s.prompt == p and s.decision is not None]
            if any(s.decision.held for s in mine if s.decision is not None):
                held = self.guard.hold(
                    [_to_pil(s.native) for s in mine],
                    [s.decision for s in mine if s.decision is not None],
                    prompt=prompt,
                )
                for slot, decision in zip(mine, held, strict=True):
                    slot.decision = decision
            self.guard.record([s.decision for s in mine if s.decision is not None], prompt=prompt)
        if output_type == "np":
            return np.stack(out)
        if output_type == "pt":
            return torch.stack(out)
        return out

    def _default_size(self, call: dict[str, Any]) -> tuple[int, int]:
        image = call.get("image")
        if isinstance(image, Image.Image):
            return image.size
        factor = int(getattr(self.pipe, "vae_scale_factor", 8))
        denoiser = getattr(self.pipe, self.steering.part, None)
        side = int(getattr(getattr(denoiser, "config", None), "sample_size", None) or 64) * factor
        return int(call.get("width") or side), int(call.get("height") or side)


def _call_signature(pipe: Any) -> tuple[inspect.Signature, str]:
    """``pipe.__call__``'s signature and the name of its ``**kwargs`` ("" when it has none)."""
    signature = inspect.signature(pipe.__call__)
    var = (p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD)
    return signature, next(var, "")


def _subset(call: dict[str, Any], prompts: list[int], per: int, n_prompts: int) -> dict[str, Any]:
    """``call`` restricted to ``prompts`` (indices), slicing per-prompt and per-image args."""
    sub = dict(call)
    images = [p * per + j for p in prompts for j in range(per)]
    for name, index in [*((n, prompts) for n in _PER_PROMPT), *((n, images) for n in _PER_IMAGE)]:
        sub[name] = _take(
            call.get(name), index, n_prompts if name in _PER_PROMPT else n_prompts * per
        )
    return sub


def _take(value: Any, index: list[int], n: int) -> Any:
    """``value[index]`` when ``value`` has one entry per item (list or batch tensor), else as is."""
    if isinstance(value, (list, tuple)) and len(value) == n and n > 1:
        return [value[i] for i in index]
    if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n and n > 1:
        return value[index]
    return value


def _generator_device(generator: Any) -> torch.device:
    first = generator[0] if isinstance(generator, (list, tuple)) else generator
    return first.device if isinstance(first, torch.Generator) else torch.device("cpu")


def _to_pil(native: Any) -> Image.Image:
    """One output image (PIL, HWC float array or CHW tensor in 0..1) as an RGB PIL image."""
    if isinstance(native, Image.Image):
        return native
    if isinstance(native, torch.Tensor):
        native = native.detach().cpu().float().permute(1, 2, 0).numpy()
    array = np.clip(np.asarray(native) * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)


def _from_pil(image: Image.Image, output_type: str, like: Any) -> Any:
    """``image`` in the caller's ``output_type``, matching ``like``'s dtype/device."""
    if output_type == "pil":
        return image
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if output_type == "np":
        return array.astype(like.dtype) if isinstance(like, np.ndarray) else array
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    return tensor.to(like) if isinstance(like, torch.Tensor) else tensor
