"""The decision types every layer shares: one verdict per prompt, one per image.

They sit at the bottom of the package (the engine makes them; audit, imaging, the guard and
every entry point read them), so nothing low has to import the engine.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from safety_lora.classifiers.base import Region
from safety_lora.taxonomy import Action, Category, PromptAction

__all__ = ["Decision", "PromptDecision", "new_request_id"]


def new_request_id() -> str:
    """A fresh opaque request id."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class PromptDecision:
    """The verdict on one prompt before generation."""

    action: PromptAction
    risk: dict[Category, float]
    rule: str
    reasons: tuple[str, ...] = ()
    matches: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    request_id: str = ""
    prompt_sha256: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    unjudged: tuple[Category, ...] = ()
    policy_sha256: str = ""

    @property
    def refused(self) -> bool:
        """True when the prompt must not be generated."""
        return self.action is PromptAction.REFUSE

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (service responses, audit lines, inside an image's decision)."""
        return {
            "request_id": self.request_id,
            "action": self.action.value,
            "rule": self.rule,
            "risk": {c.value: round(s, 6) for c, s in self.risk.items()},
            "reasons": list(self.reasons),
            "matches": list(self.matches),
            "errors": list(self.errors),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "prompt_sha256": self.prompt_sha256,
            "policy_sha256": self.policy_sha256,
        }


@dataclass(frozen=True)
class Decision:
    """The verdict on one image: what to do, which rule fired, and the evidence.

    ``unjudged`` lists the categories no image classifier of the policy scores (a verdict
    says nothing about them); ``adapters`` the sha256 of each steering adapter file loaded
    for the generation, ``closed_form`` the cache key of each adapter solved at start-up.
    ``frame`` is the frame whose verdict is the image's (the worst; 0 for a still), and
    ``policy_sha256`` identifies the policy that decided (:meth:`Policy.sha256`).
    ``input_name`` names the request's input image a decision is about (``image[0]``,
    ``mask_image``...): set on the verdicts of input images and on images refused for one.
    ``review_id`` is the queue id of an image held for a person (rule ``review.<category>``;
    ``action`` is the interim action the caller gets meanwhile). ``user_adapters`` holds the
    wrap-time screening of each adapter of the user's on the pipeline (its shift toward each
    erased concept, and what the policy did: allow or cap).
    ``stages`` names the image classifiers that ran on the image, in order: a cascade stage
    (a classifier with ``when``) that was skipped is absent, and what it would have scored and
    no stage that ran did score is in ``unjudged``.
    """

    action: Action
    rule: str
    scores: dict[Category, float]
    reasons: tuple[str, ...] = ()
    regions: tuple[Region, ...] = ()
    attempts: int = 1
    steering_scales: tuple[dict[str, float], ...] = ()
    classifiers: dict[str, str] = field(default_factory=dict)
    errors: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    request_id: str = ""
    prompt_decision: PromptDecision | None = None
    unjudged: tuple[Category, ...] = ()
    adapters: dict[str, str] = field(default_factory=dict)
    closed_form: dict[str, str] = field(default_factory=dict)
    frame: int = 0
    policy_sha256: str = ""
    input_name: str = ""
    review_id: str = ""
    user_adapters: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: tuple[str, ...] = ()

    @property
    def held(self) -> bool:
        """True when a review band held the image for a person (see ``review_id``)."""
        return self.rule.startswith("review.")

    @property
    def flagged(self) -> bool:
        """True when the image is not passed through unchanged."""
        return self.action is not Action.ALLOW

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (used by the CLI, the service and the audit log)."""
        out: dict[str, Any] = {
            "action": self.action.value,
            "rule": self.rule,
            "scores": {c.value: round(s, 6) for c, s in self.scores.items()},
            "reasons": list(self.reasons),
            "regions": [
                {"box": list(r.box), "label": r.label, "score": round(r.score, 6)}
                for r in self.regions
            ],
            "attempts": self.attempts,
            "steering_scales": [dict(s) for s in self.steering_scales],
            "classifiers": dict(self.classifiers),
            "errors": list(self.errors),
            "timings_ms": {k: round(v, 3) for k, v in self.timings_ms.items()},
            "stages": list(self.stages),
            "request_id": self.request_id,
            "unjudged": [c.value for c in self.unjudged],
            "adapters": dict(self.adapters),
            "closed_form": dict(self.closed_form),
            "frame": self.frame,
            "policy_sha256": self.policy_sha256,
            "prompt": None if self.prompt_decision is None else self.prompt_decision.to_dict(),
        }
        if self.input_name:
            out["input"] = self.input_name
        if self.held:
            out["review_id"] = self.review_id
        if self.user_adapters:
            out["user_adapters"] = {k: dict(v) for k, v in self.user_adapters.items()}
        return out
