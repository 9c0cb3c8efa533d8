"""``SafetyGuard``: the one path that admits a request and finishes it, for every entry point.

Check prompts, review images, or wrap any ``generate(prompt, **kw) -> images`` function,
sync or async, so refused prompts never reach it and its images come back as the policy
says (allowed, blurred, replaced, blocked). Every decision is written to the policy's audit
log here and nowhere else: :class:`~safety_lora.pipeline.SafePipeline`, the middleware, the
service, Ray and the CLI all compose a guard (:meth:`SafetyGuard.admit`,
:meth:`SafetyGuard.judge`, :meth:`SafetyGuard.finish`). Steering and regeneration need the
pipeline itself: use :class:`SafePipeline` for those; here an image judged ``regenerate``
gets the policy's ``escalation.final_action``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from PIL import Image

from safety_lora.audit import prompt_sha256
from safety_lora.decisions import Decision, PromptDecision, new_request_id
from safety_lora.imaging import render
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy

if TYPE_CHECKING:
    from safety_lora.review import ReviewQueue

__all__ = ["PromptRefused", "ReviewResult", "SafetyGuard"]

F = TypeVar("F", bound=Any)


class PromptRefused(Exception):
    """The policy refused a prompt; :attr:`decision` explains why (rule, risk, reasons)."""

    def __init__(self, decision: PromptDecision) -> None:
        reasons = "; ".join(decision.reasons) or decision.rule
        super().__init__(f"prompt refused by the safety policy ({decision.rule}): {reasons}")
        self.decision = decision


@dataclass(frozen=True)
class ReviewResult:
    """Images as the policy lets them through, and one decision per image, in order."""

    images: list[Image.Image]
    decisions: list[Decision]

    @property
    def nsfw_content_detected(self) -> list[bool]:
        """diffusers-compatible flags: True where an image was not passed through unchanged."""
        return [d.flagged for d in self.decisions]


class SafetyGuard:
    """A policy's engine behind a small API: ``check_prompt``, ``review``, ``moderate``, ``guard``.

    ``policy`` is a :class:`Policy`, a preset name or a policy file. ``engine`` lets several
    guards share one built engine (its classifiers load once); it must be built for ``policy``.
    """

    def __init__(
        self,
        policy: Policy | str | Path,
        *,
        engine: PolicyEngine | None = None,
        adapters: Mapping[str, str] | None = None,
        closed_form: Mapping[str, str] | None = None,
        user_adapters: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if isinstance(policy, (str, Path)):
            policy = Policy.load(policy)
        if not isinstance(policy, Policy):
            raise TypeError(f"`policy` must be a Policy, preset name or path, got {type(policy)}")
        if engine is not None and engine.policy is not policy:
            raise ValueError("`engine` was built for another policy than `policy`")
        self.policy = policy
        self.engine = engine or PolicyEngine(policy)
        #: The steering the judged images were made with (adapter file hashes, closed-form
        #: solve keys), bound once and recorded in every decision.
        self.provenance: dict[str, dict[str, str]] = {
            "adapters": dict(adapters or {}),
            "closed_form": dict(closed_form or {}),
        }
        #: The user's own adapters on the pipeline, as screened at wrap time (in decisions).
        self.user_adapters = {k: dict(v) for k, v in (user_adapters or {}).items()}
        #: Where images held for a person go (the policy's ``review`` section), when it holds.
        self.review_queue: ReviewQueue | None = None
        if policy.review.rules:
            from safety_lora.review import open_queue

            self.review_queue = open_queue(
                policy.review,
                policy_name=policy.name,
                audit=self.engine.audit_log,
                include_prompt=policy.audit.include_prompt,
            )

    def check_prompt(self, text: str, *, request_id: str | None = None) -> PromptDecision:
        """Decide allow / steer / refuse for ``text`` and write one audit line (kind ``prompt``)."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a string, got {type(text).__name__}")
        decision = self.engine.check_prompt(text, request_id=request_id)
        self.engine.record_prompt(decision, text)
        return decision

    def admit(
        self,
        prompts: Sequence[str | None],
        *,
        request_id: str,
        checked: Sequence[PromptDecision] | None = None,
    ) -> list[PromptDecision]:
        """Each prompt's decision, audited: checked now, or the caller's ``checked`` (made by
        this guard's :meth:`check_prompt` already, one per prompt, each for its very prompt).

        ``None`` stands for a prompt given only as embeddings: decided on the empty text and not
        audited (a policy with prompt classifiers refuses such calls before they get here).
        """
        if checked is None:
            decisions = []
            for prompt in prompts:
                if prompt is None:
                    decisions.append(self.engine.check_prompt("", request_id=request_id))
                else:
                    decisions.append(self.check_prompt(prompt, request_id=request_id))
            return decisions
        if len(checked) != len(prompts):
            raise ValueError(f"{len(checked)} prompt decisions for {len(prompts)} prompts")
        for i, (prompt, pd) in enumerate(zip(prompts, checked, strict=True)):
            if pd.prompt_sha256 != prompt_sha256(prompt or ""):
                raise ValueError(f"prompt decision {i} was made for another prompt")
        return list(checked)

    def check_inputs(
        self,
        inputs: Sequence[tuple[str, Image.Image]],
        *,
        prompt: str | None = None,
        prompt_decision: PromptDecision | None = None,
        request_id: str | None = None,
    ) -> list[Decision]:
        """The verdict on each image a request brings, ``(name, image)`` pairs, audited (kind
        ``input``): ``block`` refuses the request (:meth:`input_refusals`), ``blur``/``replace``
        mean generating from the input as :meth:`render` shows it, ``allow`` from it as is."""
        if not inputs:
            return []
        names = [name for name, _ in inputs]
        images = _checked_images([image for _, image in inputs])
        verdicts = self.engine.judge_inputs(
            images,
            names,
            prompt_decision=prompt_decision,
            request_id=request_id or new_request_id(),
        )
        self.engine.record(verdicts, prompt=prompt, kind="input")
        return verdicts

    def input_refusals(self, verdict: Decision, n: int) -> list[Decision]:
        """Decisions for ``n`` images not generated because input ``verdict`` refused them."""
        return self.engine.refused_for_input(verdict, n)

    def refusals(self, prompt_decision: PromptDecision, n: int) -> list[Decision]:
        """Decisions for ``n`` images not generated because ``prompt_decision`` refused them."""
        return self._screened(self.engine.refused(prompt_decision, n, **self.provenance))

    def judge(
        self,
        images: Sequence[Image.Image],
        *,
        prompt_decision: PromptDecision | None = None,
        attempt: int = 1,
        can_regenerate: bool = False,
        steering_scales: Sequence[Mapping[str, float]] = (),
        request_id: str | None = None,
    ) -> list[Decision]:
        """One final decision per image (not audited yet: :meth:`finish` or :meth:`record`)."""
        decisions = self.engine.judge(
            images,
            prompt_decision=prompt_decision,
            attempt=attempt,
            can_regenerate=can_regenerate,
            steering_scales=steering_scales,
            request_id=request_id or new_request_id(),
            **self.provenance,
        )
        return self._screened(decisions)

    def _screened(self, decisions: list[Decision]) -> list[Decision]:
        """``decisions`` recording the user's adapters' screening, when there were some."""
        if not self.user_adapters:
            return decisions
        return [replace(d, user_adapters=self.user_adapters) for d in decisions]

    def hold(
        self,
        images: Sequence[Image.Image],
        decisions: Sequence[Decision],
        *,
        prompt: str | None = None,
    ) -> list[Decision]:
        """Put each image a review band held into the review queue (the original, not the
        interim rendering); its decision comes back with the queue's ``review_id``."""
        if len(images) != len(decisions):
            raise ValueError(f"{len(images)} images but {len(decisions)} decisions")
        out = list(decisions)
        for i, (image, decision) in enumerate(zip(images, decisions, strict=True)):
            if decision.held and not decision.review_id:
                if self.review_queue is None:  # a decision made under another policy
                    raise ValueError(f"decision {i} holds an image, but this policy has no review")
                review_id = self.review_queue.hold(image, decision, prompt=prompt)
                out[i] = replace(decision, review_id=review_id)
        return out

    def record(self, decisions: Sequence[Decision], *, prompt: str | None = None) -> None:
        """Write one audit line per decision (``prompt`` is hashed into them)."""
        self.engine.record(list(decisions), prompt=prompt)

    def render(self, image: Image.Image, decision: Decision) -> Image.Image:
        """``image`` as ``decision`` lets it through (itself, blurred, a placeholder)."""
        return render(image, decision, self.policy.blur)

    def finish(
        self,
        images: Sequence[Image.Image],
        decisions: Sequence[Decision],
        *,
        prompt: str | None = None,
    ) -> tuple[list[Image.Image], list[Decision]]:
        """Render each image by its final decision, hold those a review band holds, and audit
        the decisions: a request's end. Returns the rendered images and the final decisions
        (with their review ids)."""
        rendered = self.apply(images, decisions)
        final = self.hold(images, decisions, prompt=prompt)
        self.record(final, prompt=prompt)
        return rendered, final

    def review(
        self,
        images: Sequence[Image.Image],
        *,
        prompt: str | None = None,
        prompt_decision: PromptDecision | None = None,
        request_id: str | None = None,
    ) -> list[Decision]:
        """One decision per image (audited); ``prompt`` is hashed into the audit lines."""
        images = _checked_images(images)
        if not images:
            return []
        decisions = self.judge(images, prompt_decision=prompt_decision, request_id=request_id)
        decisions = self.hold(images, decisions, prompt=prompt)
        self.record(decisions, prompt=prompt)
        return decisions

    def apply(
        self, images: Sequence[Image.Image], decisions: Sequence[Decision]
    ) -> list[Image.Image]:
        """The images as ``decisions`` let them through (blurred / replaced / blocked)."""
        if len(images) != len(decisions):
            raise ValueError(f"{len(images)} images but {len(decisions)} decisions")
        return [self.render(im, d) for im, d in zip(images, decisions, strict=True)]

    def moderate(
        self,
        images: Sequence[Image.Image],
        *,
        prompt: str | None = None,
        prompt_decision: PromptDecision | None = None,
        request_id: str | None = None,
    ) -> ReviewResult:
        """:meth:`review` then :meth:`apply`: the policy-applied images with their decisions."""
        images = _checked_images(images)
        decisions = self.judge(images, prompt_decision=prompt_decision, request_id=request_id)
        rendered, final = self.finish(images, decisions, prompt=prompt)
        return ReviewResult(images=rendered, decisions=final)

    def guard(self, fn: F) -> F:
        """Wrap ``generate(prompt, ...) -> image | list[image]`` (sync or ``async def``).

        The prompt (first argument or ``prompt=``) is checked first: a refused prompt raises
        :class:`PromptRefused` and ``fn`` is not called. The returned image(s) come back as the
        policy lets them through, in the same shape (one image, list or tuple). In the async
        wrapper the engine's CPU work runs in a worker thread, off the event loop.
        """
        if not callable(fn):
            raise TypeError(f"`fn` must be callable, got {type(fn).__name__}")
        name = getattr(fn, "__qualname__", repr(fn))

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_guarded(*args: Any, **kwargs: Any) -> Any:
                prompt = _prompt_of(name, args, kwargs)
                pd = await asyncio.to_thread(self._admit, prompt)
                out = await fn(*args, **kwargs)
                return await asyncio.to_thread(self._judge_output, name, out, prompt, pd)

            return cast(F, async_guarded)

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            prompt = _prompt_of(name, args, kwargs)
            pd = self._admit(prompt)
            return self._judge_output(name, fn(*args, **kwargs), prompt, pd)

        return cast(F, guarded)

    # -- internals ---------------------------------------------------------------------------

    def _admit(self, prompt: str) -> PromptDecision:
        decision = self.check_prompt(prompt)
        if decision.refused:
            raise PromptRefused(decision)
        return decision

    def _judge_output(self, name: str, out: Any, prompt: str, pd: PromptDecision) -> Any:
        if isinstance(out, Image.Image):
            return self.moderate([out], prompt=prompt, prompt_decision=pd).images[0]
        if isinstance(out, (list, tuple)) and all(isinstance(im, Image.Image) for im in out):
            images = self.moderate(out, prompt=prompt, prompt_decision=pd).images
            return images if isinstance(out, list) else tuple(images)
        raise TypeError(
            f"guarded function {name} must return a PIL image or a list/tuple of them, "
            f"got {type(out).__name__}"
        )


def _checked_images(images: Sequence[Image.Image]) -> list[Image.Image]:
    images = list(images)
    bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
    if bad:
        raise TypeError(f"`images` must be PIL images; items {bad} are not")
    return images


def _prompt_of(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    prompt = kwargs["prompt"] if "prompt" in kwargs else (args[0] if args else None)
    if not isinstance(prompt, str):
        raise TypeError(
            f"guarded function {name} must be called with a string prompt (first argument or "
            f"prompt=), got {type(prompt).__name__}"
        )
    return prompt
