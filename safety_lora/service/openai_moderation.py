"""``POST /v1/moderations`` in OpenAI's shape, judged by the policy.

Requests are OpenAI's: ``input`` a string, a list of strings (one result each) or a list of
content parts (``text`` and ``image_url`` with a ``data:`` URL; one result for all of them);
``model`` is accepted. Responses carry OpenAI's ``results[]`` (``flagged``, ``categories``,
``category_scores``, ``category_applied_input_types``) under OpenAI's category names,
mapped from the project's taxonomy (table below), and the policy's own verdict in an extra
``safety_lora`` field. A category no classifier of the policy judges for an input type has
an empty ``category_applied_input_types`` entry, a 0 score, and is listed in
``safety_lora.unjudged``: never a silent 0. On images, what a policy's classifiers score is
what is judged (a ``vlm_guard`` judges ``violence``, ``violence/graphic``, ``self-harm``,
``illicit``, ``hate``, ``harassment`` as its policy texts say), less what a cascade stage that
skipped the image would have scored (its decision's ``unjudged``).

=========================  ===============================================================
OpenAI category            project category
=========================  ===============================================================
``sexual``                 ``sexual``
``sexual/minors``          ``sexual`` and ``minors`` together (the hard rule's pair: min)
``violence``               ``violence``
``violence/graphic``       ``shocking`` (gore, body horror)
``self-harm``              ``self_harm``
``hate``                   ``hate``
``harassment``             ``harassment``
``illicit``                ``illegal_activity``
``*/threatening``,         not judged (no classifier of the project tells them apart)
``*/intent``,
``*/instructions``,
``illicit/violent``
=========================  ===============================================================

A category is flagged when its score reaches the policy's threshold for the input type (a
prompt rule's ``steer_at``; an image rule's ``threshold`` when its action is not ``allow``;
``sexual/minors`` when the engine's hard rule fired on the part, see
:func:`safety_lora.policies.engine.hard_rule`); a result is flagged when a category is, or the
policy's verdict
on a part is not ``allow`` (a refused prompt, a blocked or blurred image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from safety_lora.classifiers.normalize import displayed
from safety_lora.decisions import PromptDecision
from safety_lora.guard import SafetyGuard
from safety_lora.policies.engine import HARD_RULE
from safety_lora.service.text_limits import BoundedText, bounded_input
from safety_lora.taxonomy import ACTION_SEVERITY, Action, Category, PromptAction

__all__ = [
    "OPENAI_CATEGORIES",
    "ContentPart",
    "ModerationsRequest",
    "moderate",
]

#: OpenAI category -> the project categories it is read from (all of them), or None.
OPENAI_CATEGORIES: dict[str, tuple[Category, ...] | None] = {
    "harassment": (Category.HARASSMENT,),
    "harassment/threatening": None,
    "hate": (Category.HATE,),
    "hate/threatening": None,
    "illicit": (Category.ILLEGAL_ACTIVITY,),
    "illicit/violent": None,
    "self-harm": (Category.SELF_HARM,),
    "self-harm/instructions": None,
    "self-harm/intent": None,
    "sexual": (Category.SEXUAL,),
    "sexual/minors": (Category.SEXUAL, Category.MINORS),
    "violence": (Category.VIOLENCE,),
    "violence/graphic": (Category.SHOCKING,),
}


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Part):
    type: Literal["text"]
    text: BoundedText


class ImageURL(_Part):
    url: str = Field(min_length=1)


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class ModerationsRequest(_Part):
    """OpenAI's moderation request."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"input": "a prompt to check"},
                {
                    "input": [
                        {"type": "text", "text": "a caption"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo..."},
                        },
                    ]
                },
            ]
        }
    )

    input: Annotated[
        BoundedText | list[BoundedText] | list[ContentPart], BeforeValidator(bounded_input)
    ] = Field(
        description="a text, a list of texts (one result each) or a list of content parts (one "
        "result); bounded by the server's max_text_chars, max_texts and max_parts"
    )
    model: str | None = Field(
        default=None, max_length=256, description="accepted; the policy decides"
    )


def _text_thresholds(guard: SafetyGuard) -> dict[Category, float | None]:
    prompt = guard.policy.prompt
    return {c: prompt.rule(c).steer_at for c in Category}


def _image_thresholds(guard: SafetyGuard) -> dict[Category, float | None]:
    out: dict[Category, float | None] = dict.fromkeys(Category)
    for category, rule in guard.policy.categories.items():
        if rule.action is not Action.ALLOW:
            out[category] = rule.threshold
    return out


_PROMPT_SEVERITY = {PromptAction.ALLOW: 0, PromptAction.STEER: 1, PromptAction.REFUSE: 2}


def _as_stored_and_displayed(guard: SafetyGuard, text: str, request_id: str) -> PromptDecision:
    """The stricter verdict on ``text`` as stored and as a reader sees it (bidi overrides
    resolved: ``"a \u202eedun\u202c child"`` shows "a nude child")."""
    stored = guard.check_prompt(text, request_id=request_id)
    shown = displayed(text)
    if shown == text:
        return stored
    seen = guard.check_prompt(shown, request_id=request_id)
    rank = [(_PROMPT_SEVERITY[d.action], max(d.risk.values(), default=0.0)) for d in (stored, seen)]
    return seen if rank[1] > rank[0] else stored


def moderate(
    guard: SafetyGuard, parts: Sequence[tuple[str, Any]], *, request_id: str
) -> dict[str, Any]:
    """One OpenAI result for ``parts`` (``("text", str)`` / ``("image", PIL image)``)."""
    scores = {name: 0.0 for name in OPENAI_CATEGORIES}
    flagged = dict.fromkeys(OPENAI_CATEGORIES, False)
    applied: dict[str, list[str]] = {name: [] for name in OPENAI_CATEGORIES}
    verdicts: list[dict[str, Any]] = []
    worst = Action.ALLOW
    for kind, value in parts:
        if kind == "text":
            pd = _as_stored_and_displayed(guard, value, request_id)
            own, unjudged, thresholds = pd.risk, set(pd.unjudged), _text_thresholds(guard)
            blocked, rule = pd.refused, pd.rule
            verdicts.append({"type": "text", **pd.to_dict()})
        else:
            (decision,) = guard.review([value], request_id=request_id)
            own, unjudged, thresholds = (
                decision.scores,
                set(decision.unjudged),
                _image_thresholds(guard),
            )
            blocked, rule = decision.action is not Action.ALLOW, decision.rule
            if ACTION_SEVERITY[decision.action] > ACTION_SEVERITY[worst]:
                worst = decision.action
            verdicts.append({"type": "image", **decision.to_dict()})
        if blocked and worst is Action.ALLOW:
            worst = Action.BLOCK
        input_type = "text" if kind == "text" else "image"
        for name, sources in OPENAI_CATEGORIES.items():
            if sources is None or unjudged & set(sources):
                continue
            score = min(own.get(c, 0.0) for c in sources)
            applied[name].append(input_type)
            scores[name] = max(scores[name], score)
            if name == "sexual/minors":  # the engine's hard rule, one semantics everywhere
                hit = rule == HARD_RULE
            else:
                limit = thresholds[sources[0]]
                hit = limit is not None and score >= limit
            flagged[name] = flagged[name] or hit
    unjudged_names = sorted(name for name, types in applied.items() if not types)
    return {
        "flagged": any(flagged.values()) or worst is not Action.ALLOW,
        "categories": flagged,
        "category_scores": {k: round(v, 6) for k, v in scores.items()},
        "category_applied_input_types": applied,
        "safety_lora": {
            "policy": guard.policy.name,
            "action": worst.value,
            "unjudged": unjudged_names,
            "parts": verdicts,
        },
    }
