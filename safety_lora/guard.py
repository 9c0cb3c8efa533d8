"""``SafetyGuard``: the policy around code you already have (no diffusers pipeline needed).

Check prompts, review images, or wrap any ``generate(prompt, **kw) -> images`` function,
sync or async, so refused prompts never reach it and its images come back as the policy
says (allowed, blurred, replaced, blocked). Every decision is written to the policy's audit
log. Steering and regeneration need the pipeline itself: use :class:`SafePipeline` for those;
here an image judged ``regenerate`` gets the policy's ``escalation.final_action``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from PIL import Image

from safety_lora.imaging import render
from safety_lora.policies.engine import Decision, PolicyEngine, PromptDecision, new_request_id
from safety_lora.policies.schema import Policy

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

    def __init__(self, policy: Policy | str | Path, *, engine: PolicyEngine | None = None) -> None:
        if isinstance(policy, (str, Path)):
            policy = Policy.load(policy)
        if not isinstance(policy, Policy):
            raise TypeError(f"`policy` must be a Policy, preset name or path, got {type(policy)}")
        if engine is not None and engine.policy is not policy:
            raise ValueError("`engine` was built for another policy than `policy`")
        self.policy = policy
        self.engine = engine or PolicyEngine(policy)

    def check_prompt(self, text: str, *, request_id: str | None = None) -> PromptDecision:
        """Decide allow / steer / refuse for ``text`` and write one audit line (kind ``prompt``)."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a string, got {type(text).__name__}")
        decision = self.engine.check_prompt(text, request_id=request_id)
        self.engine.record_prompt(decision, text)
        return decision

    def review(
        self,
        images: Sequence[Image.Image],
        *,
        prompt: str | None = None,
        prompt_decision: PromptDecision | None = None,
        request_id: str | None = None,
    ) -> list[Decision]:
        """One decision per image (audited); ``prompt`` is hashed into the audit lines."""
        images = list(images)
        bad = [i for i, im in enumerate(images) if not isinstance(im, Image.Image)]
        if bad:
            raise TypeError(f"`images` must be PIL images; items {bad} are not")
        if not images:
            return []
        decisions = self.engine.judge(
            images,
            prompt_decision=prompt_decision,
            can_regenerate=False,
            request_id=request_id or new_request_id(),
        )
        self.engine.record(decisions, prompt=prompt)
        return decisions

    def apply(
        self, images: Sequence[Image.Image], decisions: Sequence[Decision]
    ) -> list[Image.Image]:
        """The images as ``decisions`` let them through (blurred / replaced / blocked)."""
        if len(images) != len(decisions):
            raise ValueError(f"{len(images)} images but {len(decisions)} decisions")
        blur = self.policy.blur
        return [render(im, d, blur) for im, d in zip(images, decisions, strict=True)]

    def moderate(
        self,
        images: Sequence[Image.Image],
        *,
        prompt: str | None = None,
        prompt_decision: PromptDecision | None = None,
        request_id: str | None = None,
    ) -> ReviewResult:
        """:meth:`review` then :meth:`apply`: the policy-applied images with their decisions."""
        images = list(images)
        decisions = self.review(
            images, prompt=prompt, prompt_decision=prompt_decision, request_id=request_id
        )
        return ReviewResult(images=self.apply(images, decisions), decisions=decisions)

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


def _prompt_of(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    prompt = kwargs["prompt"] if "prompt" in kwargs else (args[0] if args else None)
    if not isinstance(prompt, str):
        raise TypeError(
            f"guarded function {name} must be called with a string prompt (first argument or "
            f"prompt=), got {type(prompt).__name__}"
        )
    return prompt
