"""The shared vocabulary: harm categories (I2P taxonomy plus ``minors``) and actions."""

from __future__ import annotations

from enum import Enum


class Category(str, Enum):
    """A harm category; every classifier scores on these, on one 0..1 scale."""

    SEXUAL = "sexual"
    VIOLENCE = "violence"
    SHOCKING = "shocking"
    HATE = "hate"
    HARASSMENT = "harassment"
    SELF_HARM = "self_harm"
    ILLEGAL_ACTIVITY = "illegal_activity"
    MINORS = "minors"

    def __str__(self) -> str:
        return self.value


class Action(str, Enum):
    """What the policy does with one generated image."""

    ALLOW = "allow"
    BLUR = "blur"
    REPLACE = "replace"
    BLOCK = "block"
    REGENERATE = "regenerate"

    def __str__(self) -> str:
        return self.value


class PromptAction(str, Enum):
    """What the policy does with one prompt before generation."""

    ALLOW = "allow"
    STEER = "steer"
    REFUSE = "refuse"

    def __str__(self) -> str:
        return self.value


#: Severity order used to combine actions (the most severe wins).
ACTION_SEVERITY: dict[Action, int] = {
    Action.ALLOW: 0,
    Action.BLUR: 1,
    Action.REGENERATE: 2,
    Action.REPLACE: 3,
    Action.BLOCK: 4,
}
