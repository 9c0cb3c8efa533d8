"""The decision engine: classifier scores in, one explained decision per prompt and image out."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from safety_lora.audit import AuditLog, image_records, prompt_record, prompt_sha256
from safety_lora.classifiers.base import ImageClassifier, ImageScores, PromptClassifier, Region
from safety_lora.classifiers.normalize import letter_scripts
from safety_lora.classifiers.prompt_views import CLIP_WORDS, TextWindow, score_views
from safety_lora.decisions import Decision, PromptDecision, new_request_id
from safety_lora.imaging import Page, View, pages, views
from safety_lora.policies.schema import MINORS_MAX_THRESHOLD, Policy
from safety_lora.taxonomy import ACTION_SEVERITY, Action, Category, PromptAction

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["HARD_RULE", "Decision", "PolicyEngine", "PromptDecision", "hard_rule"]

#: Frames times pixels judged for one image at most (64 frames of 1024x1024): beyond, blocked.
MAX_FRAME_PIXELS = 64 * 1024 * 1024
#: The rule no policy can relax: sexual content involving minors is always blocked/refused.
HARD_RULE = "hard:minors+sexual"
#: An input rule's action as the decision's action (``block``: the request is refused).
_INPUT_ACTIONS = {
    "refuse": Action.BLOCK,
    "replace": Action.REPLACE,
    "blur": Action.BLUR,
    "allow": Action.ALLOW,
}


class PolicyEngine:
    """Builds a policy's classifiers once and turns their scores into decisions."""

    def __init__(
        self,
        policy: Policy,
        *,
        image_classifiers: Sequence[ImageClassifier] | None = None,
        prompt_classifiers: Sequence[PromptClassifier] | None = None,
    ) -> None:
        """``image_classifiers``/``prompt_classifiers`` replace the ones the policy would build
        (the same classifiers served elsewhere, e.g. by Ray Serve deployments)."""
        self.policy = policy
        self.policy_sha256 = policy.sha256()
        self.image_classifiers: list[ImageClassifier] = (
            [c.build() for c in policy.classifiers]
            if image_classifiers is None
            else list(image_classifiers)
        )
        self.prompt_classifiers: list[PromptClassifier] = (
            [c.build() for c in policy.prompt.classifiers]
            if prompt_classifiers is None
            else list(prompt_classifiers)
        )
        self.audit_log = AuditLog(policy.audit.path) if policy.audit.path is not None else None
        self.unjudged_images = policy.unjudged_images()
        self.unjudged_prompts = policy.unjudged_prompts()

    @cached_property
    def fingerprints(self) -> dict[str, str]:
        """Classifier name -> fingerprint of its weights/rules (reported in every decision)."""
        out: dict[str, str] = {}
        classifiers: list[PromptClassifier | ImageClassifier] = [
            *self.prompt_classifiers,
            *self.image_classifiers,
        ]
        for c in classifiers:
            out[_unique(out, c.name)] = c.fingerprint
        return out

    # -- before generation -----------------------------------------------------------------

    #: What the wrapped pipeline's text encoders read of a prompt (SafePipeline sets them at
    #: wrap time); without a pipeline, CLIP's 77 tokens approximated by words.
    prompt_windows: tuple[TextWindow, ...] = (CLIP_WORDS,)

    def check_prompt(self, prompt: str, *, request_id: str | None = None) -> PromptDecision:
        """Score ``prompt`` with every prompt classifier and decide allow / steer / refuse.

        Each classifier scores the prompt, what each text encoder reads of it and its clauses
        (:mod:`~safety_lora.classifiers.prompt_views`), worst score kept; reasons name the
        window or clause that set a score when it was not the whole prompt."""
        request_id = request_id or new_request_id()
        prompt_sha = prompt_sha256(prompt)
        risk: dict[Category, float] = {}
        where: dict[Category, str] = {}
        matches: list[str] = []
        errors: list[str] = []
        timings: dict[str, float] = {}
        own_minors = self.policy.prompt.rule(Category.MINORS).refuse_at
        minors_at = min(MINORS_MAX_THRESHOLD, own_minors or MINORS_MAX_THRESHOLD)
        for classifier in self.prompt_classifiers:
            start = time.perf_counter()
            try:
                viewed = score_views(classifier, prompt, self.prompt_windows, minors_at=minors_at)
                for category, score in _checked(viewed.scores, classifier.name).items():
                    if score > risk.get(category, 0.0) and category in viewed.decided_by:
                        where[category] = viewed.decided_by[category]
                    elif score > risk.get(category, 0.0):
                        where.pop(category, None)
                _merge_max(risk, _checked(viewed.scores, classifier.name))
                matches.extend(viewed.matches)
            except Exception as e:  # any failure is judged by on_error, never ignored
                errors.append(f"{classifier.name}: {type(e).__name__}: {e}")
            timings[classifier.name] = (time.perf_counter() - start) * 1e3

        def decision(action: PromptAction, rule: str, reasons: list[str]) -> PromptDecision:
            return PromptDecision(
                action=action,
                risk=risk,
                rule=rule,
                reasons=tuple(reasons),
                matches=tuple(matches),
                errors=tuple(errors),
                request_id=request_id,
                prompt_sha256=prompt_sha,
                timings_ms=timings,
                unjudged=self.unjudged_prompts,
                policy_sha256=self.policy_sha256,
            )

        if errors:
            return decision(PromptAction.REFUSE, "on_error", ["prompt classifier failed"])
        hard = hard_rule(risk, lambda c: self.policy.prompt.rule(c).refuse_at)
        if hard is not None:
            found = [f"{c.value} from the {where[c]}" for c in (Category.MINORS, Category.SEXUAL)
                     if c in where]  # fmt: skip
            return decision(PromptAction.REFUSE, HARD_RULE, [hard, *found])
        refuse, steer = [], []
        for category, score in sorted(risk.items(), key=lambda kv: -kv[1]):
            rule = self.policy.prompt.rule(category)
            if rule.refuse_at is not None and score >= rule.refuse_at:
                refuse.append((category, score, rule.refuse_at))
            elif rule.steer_at is not None and score >= rule.steer_at:
                steer.append((category, score, rule.steer_at))
        if refuse:
            category = refuse[0][0]
            reasons = [
                f"{c.value} risk {s:.2f} >= refuse_at {t:.2f}{_from(where, c)}"
                for c, s, t in refuse
            ]
            return decision(
                PromptAction.REFUSE, f"prompt.rules.{category.value}.refuse_at", reasons
            )
        latin, other = letter_scripts(prompt)
        unreadable = self.policy.prompt.unreadable
        if other > latin and unreadable != "allow" and (unreadable == "refuse" or not steer):
            why = f"{other} of {latin + other} letters in scripts the prompt model does not read"
            action = PromptAction.REFUSE if unreadable == "refuse" else PromptAction.STEER
            return decision(action, "prompt.unreadable", [why])
        if steer:
            category = steer[0][0]
            reasons = [
                f"{c.value} risk {s:.2f} >= steer_at {t:.2f}{_from(where, c)}" for c, s, t in steer
            ]
            return decision(PromptAction.STEER, f"prompt.rules.{category.value}.steer_at", reasons)
        return decision(PromptAction.ALLOW, "prompt:allow", [])

    def steering_scales(
        self,
        prompt_decision: PromptDecision | None,
        attempt: int = 1,
        evidence: Mapping[Category, float] | None = None,
    ) -> dict[str, float]:
        """Steering method name (adapter or SLD guidance) -> strength for this request, attempt.

        ``evidence``: the flagged categories' scores on the image being regenerated. They count
        as risk for the methods steering those categories, as the prompt's risk does, and
        floor the strength at ``ladder[attempt] * score``: a flagged image is regenerated
        steered, also by a method whose resting ``scale`` is 0.
        """
        return {
            name: strength
            for name, (strength, _) in self.steering_plan(
                prompt_decision, attempt, evidence
            ).items()
        }

    def steering_plan(
        self,
        prompt_decision: PromptDecision | None,
        attempt: int = 1,
        evidence: Mapping[Category, float] | None = None,
    ) -> dict[str, tuple[float, str]]:
        """:meth:`steering_scales` with, per method, the evidence that set its strength."""
        multiplier = self.policy.escalation.multiplier(attempt)
        plan = {}
        for method in self.policy.steering.methods:
            prompt_risk = 0.0
            if prompt_decision is not None:
                prompt_risk = max(
                    (prompt_decision.risk.get(c, 0.0) for c in method.categories), default=0.0
                )
            image_risk, category = 0.0, None
            for c in method.categories:
                score = (evidence or {}).get(c, 0.0)
                if score > image_risk:
                    image_risk, category = score, c
            risk = max(prompt_risk, image_risk)
            strength = (method.scale + method.risk_boost * risk) * multiplier
            strength = min(method.max_scale, max(strength, image_risk * multiplier))
            if category is not None and image_risk >= prompt_risk:
                why = f"image evidence {category.value} {image_risk:.2f}"
            else:
                why = f"prompt risk {prompt_risk:.2f}"
            plan[method.adapter_name] = (strength, f"{why}, ladder x{multiplier:g}")
        return plan

    def evidence(self, decision: Decision) -> dict[Category, float]:
        """The scores of the categories whose rule fired in ``decision`` (an image flagged
        ``regenerate``): what its regeneration is steered by (:meth:`steering_scales`)."""
        out = {}
        for category, score in decision.scores.items():
            rule = self.policy.rule_for(category)
            if rule is not None and rule.action is not Action.ALLOW and score >= rule.threshold:
                out[category] = score
        return out

    def refused(
        self,
        prompt_decision: PromptDecision,
        n: int,
        *,
        adapters: Mapping[str, str] | None = None,
        closed_form: Mapping[str, str] | None = None,
    ) -> list[Decision]:
        """Decisions for ``n`` images that were not generated because the prompt was refused."""
        return [
            Decision(
                action=Action.BLOCK,
                rule=prompt_decision.rule,
                scores={},
                reasons=("prompt refused", *prompt_decision.reasons),
                attempts=0,
                classifiers=self.fingerprints,
                errors=prompt_decision.errors,
                timings_ms=dict(prompt_decision.timings_ms),
                request_id=prompt_decision.request_id,
                prompt_decision=prompt_decision,
                unjudged=self.unjudged_images,
                adapters=dict(adapters or {}),
                closed_form=dict(closed_form or {}),
                policy_sha256=self.policy_sha256,
            )
            for _ in range(n)
        ]

    def refused_for_input(self, verdict: Decision, n: int) -> list[Decision]:
        """Decisions for ``n`` images not generated because input ``verdict`` refused them."""
        return [
            replace(
                verdict,
                scores={},
                regions=(),
                reasons=(f"input {verdict.input_name} refused", *verdict.reasons),
                attempts=0,
                frame=0,
            )
            for _ in range(n)
        ]

    # -- after generation ------------------------------------------------------------------

    def judge(
        self,
        images: Sequence[Image],
        *,
        prompt_decision: PromptDecision | None = None,
        attempt: int = 1,
        can_regenerate: bool = True,
        steering_scales: Sequence[Mapping[str, float]] = (),
        request_id: str | None = None,
        adapters: Mapping[str, str] | None = None,
        closed_form: Mapping[str, str] | None = None,
    ) -> list[Decision]:
        """Score ``images`` with every image classifier; one final decision per image, in order.

        ``attempt`` is the generation's attempt (1 = first): ``regenerate`` at the policy's
        last attempt, or anywhere when the caller cannot regenerate (``can_regenerate=False``:
        a guard around images it did not generate), becomes ``escalation.final_action``.
        ``steering_scales`` are the strengths of attempts 1..``attempt``, and
        ``adapters``/``closed_form`` identify the steering the images were generated with
        (recorded in each decision and audit line).
        """
        request_id = request_id or (prompt_decision.request_id if prompt_decision else "")
        request_id = request_id or new_request_id()
        common: dict[str, Any] = {
            "attempts": attempt,
            "steering_scales": tuple(dict(s) for s in steering_scales),
            "classifiers": self.fingerprints,
            "timings_ms": {},
            "request_id": request_id,
            "prompt_decision": prompt_decision,
            "unjudged": self.unjudged_images,
            "adapters": dict(adapters or {}),
            "closed_form": dict(closed_form or {}),
            "policy_sha256": self.policy_sha256,
        }
        judging: dict[str, Any] = {
            "attempt": attempt,
            "can_regenerate": can_regenerate,
            "common": common,
        }
        decided: dict[int, Decision] = {}
        expanded: list[tuple[int, View]] = []  # every frame (and hidden-pixel view) to judge
        for i, image in enumerate(images):
            try:  # every image the file holds, sized from its headers before any is decoded
                refusal = self._frame_rule(pages(image), common)
                if refusal is not None:
                    decided[i] = refusal
                    continue
                expanded.extend((i, view) for view in views(image))
            except Exception as e:  # whatever Pillow raises on a hostile file: on_error
                error = f"image {i} cannot be decoded: {type(e).__name__}: {e}"
                decided[i] = self._decide({}, [], errors=(error,), **judging)
        scores, regions, errors, ran = self._classify([view.image for _, view in expanded], common)
        for i in range(len(images)):
            if i in decided:
                continue
            mine = [(k, view) for k, (owner, view) in enumerate(expanded) if owner == i]
            candidates = [
                (_staged(self._decide(scores[k], regions[k], errors=errors, **judging), ran[k]),
                 view)
                for k, view in mine
            ]  # fmt: skip
            decision, view = max(
                candidates,
                key=lambda c: (ACTION_SEVERITY[c[0].action], max(c[0].scores.values(), default=0)),
            )
            if len(candidates) > 1:
                reasons = (
                    *decision.reasons,
                    f"judged {len(candidates)} views; worst: {view.label}",
                )
                decision = replace(decision, frame=view.frame, reasons=reasons)
            decided[i] = decision
        return [decided[i] for i in range(len(images))]

    def judge_inputs(
        self,
        images: Sequence[Image],
        names: Sequence[str],
        *,
        prompt_decision: PromptDecision | None = None,
        request_id: str | None = None,
        adapters: Mapping[str, str] | None = None,
        closed_form: Mapping[str, str] | None = None,
    ) -> list[Decision]:
        """One verdict per image a request brought (``names[i]`` its argument, ``image[0]``),
        under the policy's ``inputs`` section, before anything is generated.

        ``block`` refuses the request; ``blur``/``replace`` let generation go on from the
        input so rendered; ``allow`` uses it as it is. An input that cannot be judged (not
        decodable, a classifier error, a multi-frame rule) and the minors+sexual hard rule
        always refuse: generating from an unjudged image is never the fail-closed choice.
        """
        if len(images) != len(names):
            raise ValueError(f"{len(images)} input images but {len(names)} names")
        judged = self.judge(
            images,
            prompt_decision=prompt_decision,
            can_regenerate=False,
            request_id=request_id,
            adapters=adapters,
            closed_form=closed_form,
        )
        return [self._input_verdict(d, n) for d, n in zip(judged, names, strict=True)]

    def _input_verdict(self, judged: Decision, name: str) -> Decision:
        """``judged`` (a verdict by the image rules) re-decided by the input rules."""
        if judged.rule in (HARD_RULE, "on_error", "multi_frame", "max_frames"):
            why = "cannot be judged" if judged.rule == "on_error" else judged.rule
            reasons = (f"{name}: {why}: the request is refused", *judged.reasons)
            rule = "inputs.on_error" if judged.rule == "on_error" else judged.rule
            return replace(judged, action=Action.BLOCK, rule=rule, reasons=reasons, input_name=name)
        fired = []
        for category, score in judged.scores.items():
            found = self.policy.input_rule_for(category)
            if found is not None and score >= found[0] and found[1] != "allow":
                fired.append((_INPUT_ACTIONS[found[1]], score, category, found))
        if not fired:
            return replace(
                judged, action=Action.ALLOW, rule="inputs:allow", reasons=(), regions=(),
                input_name=name,
            )  # fmt: skip
        fired.sort(key=lambda f: (ACTION_SEVERITY[f[0]], f[1]), reverse=True)
        action, _, category, _ = fired[0]
        own = category in self.policy.inputs.categories
        reasons = tuple(f"{name}: {c.value} {s:.2f} >= {t:.2f} -> {a}" for _, s, c, (t, a) in fired)
        kept = tuple(r for r in judged.regions if r.category in {f[2] for f in fired})
        return replace(
            judged,
            action=action,
            rule=f"inputs.categories.{category.value}" if own else "inputs.action",
            reasons=reasons,
            regions=kept,
            input_name=name,
        )

    def _classify(
        self, images: list[Image], common: dict[str, Any]
    ) -> tuple[list[dict[Category, float]], list[list[Region]], tuple[str, ...], list[_Stages]]:
        """Every image classifier on ``images``, a cascade stage (``when``) only on the images
        it admits: scores, regions and the stages run per image, and errors."""
        n = len(images)
        per_image: list[dict[Category, float]] = [{} for _ in range(n)]
        regions: list[list[Region]] = [[] for _ in range(n)]
        stages = [_Stages() for _ in range(n)]
        errors: list[str] = []
        if not n:
            return per_image, regions, (), stages
        configs = self.policy.classifiers  # the stages' `when`, unless other classifiers serve
        routed = len(configs) == len(self.image_classifiers)
        names: dict[str, str] = {}
        for k, classifier in enumerate(self.image_classifiers):
            name = _unique(names, classifier.name)
            names[name] = name
            when = configs[k].when if routed else None
            scores_here = configs[k].categories() if routed else frozenset()
            chosen = [
                i for i in range(n)
                if when is None or when.admits(per_image[i], stages[i].judged, scores_here)
            ]  # fmt: skip
            for i in set(range(n)).difference(chosen):
                stages[i].skipped |= scores_here
            if not chosen:
                continue
            start = time.perf_counter()
            try:
                results = classifier.classify([images[i] for i in chosen])
                if len(results) != len(chosen):
                    raise ValueError(f"returned {len(results)} results for {len(chosen)} images")
                for i, result in zip(chosen, results, strict=True):
                    scores = _checked(result.scores, classifier.name)
                    _merge_max(per_image[i], scores)
                    regions[i].extend(_regions_of(result))
                    stages[i].ran.append(name)
                    stages[i].judged |= scores.keys()
                    stages[i].notes.extend(result.notes)
            except Exception as e:  # judged by on_error, never a silent "no check"
                errors.append(f"{classifier.name}: {type(e).__name__}: {e}")
            common["timings_ms"][name] = (time.perf_counter() - start) * 1e3
        return per_image, regions, tuple(errors), stages

    def _frame_rule(self, found: Sequence[Page], common: dict[str, Any]) -> Decision | None:
        """A block decision for a file of several images (frames, pages, layers, icon entries:
        ``found``) that the policy refuses, or one with too many pixels over all of them."""
        n = len(found)
        if n == 1:
            return None
        total = sum(page.pixels for page in found)
        if self.policy.multi_frame == "refuse":
            rule, reason = "multi_frame", f"{n} frames; the policy refuses multi-frame images"
        elif n > self.policy.max_frames:
            rule, reason = (
                "max_frames",
                f"{n} frames, over the policy's max_frames {self.policy.max_frames}",
            )
        elif total > MAX_FRAME_PIXELS:
            rule = "max_frames"
            sizes = ", ".join(f"{p.size[0]}x{p.size[1]}" for p in found[:4])
            sizes += ", ..." if n > 4 else ""
            reason = f"{n} frames ({sizes}): {total} pixels in all, over {MAX_FRAME_PIXELS}"
        else:
            return None
        return Decision(action=Action.BLOCK, rule=rule, scores={}, reasons=(reason,), **common)

    def _decide(
        self,
        scores: dict[Category, float],
        regions: list[Region],
        *,
        errors: tuple[str, ...],
        attempt: int,
        can_regenerate: bool,
        common: dict[str, Any],
    ) -> Decision:
        if errors:
            return Decision(
                action=self.policy.on_error,
                rule="on_error",
                scores=scores,
                reasons=("classifier failed; policy on_error applies",),
                errors=errors,
                **common,
            )
        hard = hard_rule(scores, self._image_threshold)
        if hard is not None:
            return Decision(
                action=Action.BLOCK,
                rule=HARD_RULE,
                scores=scores,
                reasons=(hard,),
                regions=tuple(regions),
                **common,
            )
        fired, held = [], []
        for category, score in scores.items():
            band = self.policy.review.band(category, score)
            if band is not None:  # a person decides within the band, instead of the rule
                held.append((ACTION_SEVERITY[Action(band.interim)], score, category, band))
                continue
            rule = self.policy.rule_for(category)
            if rule is not None and score >= rule.threshold and rule.action is not Action.ALLOW:
                fired.append((ACTION_SEVERITY[rule.action], score, category, rule))
        top = max(held, key=lambda h: h[0:2]) if held else None
        if top is not None and (not fired or top[0:2] >= max(f[0:2] for f in fired)):
            _, score, category, band = top
            lo, hi = band.between
            interim = Action(band.interim)
            return Decision(
                action=interim,
                rule=f"review.{category.value}",
                scores=scores,
                reasons=(
                    f"{category.value} {score:.2f} in review band [{lo:.2f}, {hi:.2f}"
                    f"{']' if hi == 1.0 else ')'} -> held for review, {interim.value} meanwhile",
                ),
                regions=tuple(r for r in regions if r.category is category),
                **common,
            )
        if not fired:
            return Decision(action=Action.ALLOW, rule="allow", scores=scores, **common)
        fired.sort(key=lambda f: (f[0], f[1]), reverse=True)
        _, _, category, rule = fired[0]
        action = rule.action
        reasons = [
            f"{c.value} {s:.2f} >= {r.threshold:.2f} -> {r.action.value}" for _, s, c, r in fired
        ]
        rule_name = f"categories.{category.value}"
        escalation = self.policy.escalation
        if action is Action.REGENERATE and not can_regenerate:
            action, rule_name = escalation.final_action, "escalation.final_action"
            reasons.append(
                f"no regeneration outside a pipeline: escalation.final_action -> {action.value}"
            )
        elif action is Action.REGENERATE and attempt >= escalation.max_attempts:
            action, rule_name = escalation.final_action, "escalation.final_action"
            reasons.append(
                f"attempt {attempt} of {escalation.max_attempts}: "
                f"escalation.final_action -> {action.value}"
            )
        fired_categories = {c for *_, c, _ in fired}
        kept = tuple(r for r in regions if r.category in fired_categories)
        return Decision(
            action=action,
            rule=rule_name,
            scores=scores,
            reasons=tuple(reasons),
            regions=kept,
            **common,
        )

    def _image_threshold(self, category: Category) -> float | None:
        rule = self.policy.rule_for(category)
        return rule.threshold if rule is not None else None

    def record(
        self, decisions: Sequence[Decision], *, prompt: str | None = None, kind: str = "image"
    ) -> None:
        """Append one audit line per image decision (no-op when the policy names no audit path);
        ``kind="input"`` for the verdicts on a request's input images."""
        if self.audit_log is not None:
            include = self.policy.audit.include_prompt
            self.audit_log.write(
                image_records(
                    decisions,
                    policy=self.policy.name,
                    prompt=prompt,
                    include_prompt=include,
                    kind=kind,
                )
            )

    def record_prompt(self, decision: PromptDecision, text: str) -> None:
        """Append the audit line of one prompt check (kind ``prompt``)."""
        if self.audit_log is not None:
            kept = text if self.policy.audit.include_prompt else None
            self.audit_log.write([prompt_record(decision, policy=self.policy.name, text=kept)])


def hard_rule(
    scores: Mapping[Category, float], threshold: Callable[[Category], float | None]
) -> str | None:
    """Why ``scores`` break the rule no policy relaxes (minors and sexual together), or None.

    Each of the two fires at the policy's own threshold for it (``threshold``: an image
    category's ``threshold``, a prompt rule's ``refuse_at``), never higher than
    ``MINORS_MAX_THRESHOLD``: a policy can make the rule stricter, not laxer. Prompts, images
    and the OpenAI-compatible moderation share these semantics.
    """
    found = []
    for category in (Category.MINORS, Category.SEXUAL):
        own = threshold(category)
        at = MINORS_MAX_THRESHOLD if own is None else min(own, MINORS_MAX_THRESHOLD)
        score = scores.get(category, 0.0)
        if score < at:
            return None
        found.append(f"{category.value} {score:.2f} >= {at:.2f}")
    return " and ".join(found) + ": never allowed"


@dataclass
class _Stages:
    """What a cascade did on one image: the stages that ran, the categories they scored, those
    of the stages it skipped, and the notes (rationales) the stages gave."""

    ran: list[str] = field(default_factory=list)
    judged: set[Category] = field(default_factory=set)
    skipped: set[Category] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


def _staged(decision: Decision, stages: _Stages) -> Decision:
    """``decision`` with the stages that ran, their notes in its reasons, and what a skipped
    stage would have scored (and no stage that ran scored) in its ``unjudged``."""
    missing = stages.skipped - stages.judged
    return replace(
        decision,
        stages=tuple(stages.ran),
        unjudged=tuple(c for c in Category if c in missing or c in decision.unjudged),
        reasons=(*decision.reasons, *stages.notes),
    )


def _from(where: Mapping[Category, str], category: Category) -> str:
    """`` (from the <view>)`` when a prompt view other than the whole prompt set the score."""
    return f" (from the {where[category]})" if category in where else ""


def _merge_max(into: dict[Category, float], scores: Mapping[Category, float]) -> None:
    for category, score in scores.items():
        into[category] = max(into.get(category, 0.0), score)


def _checked(scores: Mapping[Category, float], name: str) -> dict[Category, float]:
    out = {}
    for category, score in scores.items():
        value = float(score)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(f"score {category}={score!r} is outside 0..1")
        out[Category(category)] = value
    return out


def _regions_of(result: ImageScores) -> list[Region]:
    return [r for r in result.regions if r.category is not None]


def _unique(existing: Mapping[str, str], name: str) -> str:
    if name not in existing:
        return name
    k = 2
    while f"{name}#{k}" in existing:
        k += 1
    return f"{name}#{k}"
