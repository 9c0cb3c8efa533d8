"""The policy file schema: pydantic v2 models, strict (unknown keys rejected) and frozen.

A policy says which classifiers judge prompts and images, what each harm category's
threshold and action are, how hard to steer, how to escalate, and what to audit.
Load one with :meth:`Policy.from_file` or :meth:`Policy.preset`.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from safety_lora.classifiers.prompt_rules import PromptRulesConfig
from safety_lora.classifiers.registry import KINDS, ImageClassifierConfig, PromptClassifierConfig
from safety_lora.taxonomy import Action, Category

__all__ = [
    "MINORS_MAX_THRESHOLD",
    "PRESETS",
    "AdapterIntegrityError",
    "AdapterSpec",
    "AuditSettings",
    "BlurSettings",
    "CategoryRule",
    "Escalation",
    "Policy",
    "PolicyError",
    "PromptPolicy",
    "PromptRule",
    "SteeringPolicy",
]

#: The bundled presets, shipped as ``policies/<name>.yaml``.
PRESETS = ("strict", "balanced", "permissive")

#: No policy may make the ``minors`` detector less sensitive than this.
MINORS_MAX_THRESHOLD = 0.5

Score = Annotated[float, Field(ge=0.0, le=1.0)]


class PolicyError(ValueError):
    """A policy file could not be read or validated; the message names file, path and value."""


class AdapterIntegrityError(ValueError):
    """A steering adapter file is missing or does not match the sha256 the policy pins."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoryRule(_Strict):
    """What happens to an image whose score in this category reaches ``threshold``."""

    threshold: Score = 0.5
    action: Action = Action.BLOCK


class PromptRule(_Strict):
    """Prompt risk levels for one category: steer from ``steer_at``, refuse from ``refuse_at``."""

    steer_at: Score = 0.3
    refuse_at: Score | None = None


def _default_prompt_classifiers() -> list[PromptClassifierConfig]:
    return [PromptRulesConfig()]


class PromptPolicy(_Strict):
    """The check before generation: prompt classifiers and per-category risk rules."""

    classifiers: list[PromptClassifierConfig] = Field(default_factory=_default_prompt_classifiers)
    rules: dict[Category, PromptRule] = Field(default_factory=dict)

    def rule(self, category: Category) -> PromptRule:
        """The rule for ``category`` (the default rule when the policy names none)."""
        return self.rules.get(category, PromptRule())


class Escalation(_Strict):
    """Regeneration: up to ``max_attempts`` generations, attempt k steering at ``ladder[k-1]``x.

    When the ladder is shorter than ``max_attempts`` its last multiplier repeats. An image
    still flagged ``regenerate`` at the last attempt gets ``final_action``.
    """

    max_attempts: int = Field(default=3, ge=1, le=10)
    ladder: list[Annotated[float, Field(gt=0.0, le=10.0)]] = Field(
        default_factory=lambda: [1.0, 1.5, 2.0], min_length=1
    )
    final_action: Action = Action.BLOCK

    @field_validator("final_action")
    @classmethod
    def _final_is_terminal(cls, value: Action) -> Action:
        if value is Action.REGENERATE:
            raise ValueError("final_action cannot be 'regenerate' (it is the last attempt)")
        return value

    def multiplier(self, attempt: int) -> float:
        """Steering multiplier for the 1-based ``attempt``."""
        return self.ladder[min(attempt, len(self.ladder)) - 1]


class AuditSettings(_Strict):
    """The JSONL audit log: one line per final decision. No ``path`` means no log file."""

    path: Path | None = None
    include_prompt: bool = False


class BlurSettings(_Strict):
    """How ``blur`` renders: radius and box padding, as fractions of the image's short side."""

    radius: Annotated[float, Field(gt=0.0, le=1.0)] = 0.08
    region_padding: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1


class AdapterSpec(_Strict):
    """One safety-steering adapter file and how strongly to apply it.

    Strength for a request is ``min(max_scale, (scale + risk_boost * risk) * ladder[attempt])``,
    where ``risk`` is the prompt's highest risk among the adapter's ``categories``.
    """

    path: Path
    name: str | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    categories: list[Category] = Field(min_length=1)
    scale: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    risk_boost: Annotated[float, Field(ge=0.0, le=10.0)] = 0.0
    max_scale: Annotated[float, Field(gt=0.0, le=10.0)] = 2.0

    @property
    def adapter_name(self) -> str:
        """The name the adapter gets on the UNet (``name`` or the file's stem)."""
        return self.name or self.path.stem.replace(".", "_")

    def verified_sha256(self) -> str:
        """Hash the file; raise :class:`AdapterIntegrityError` if missing or not the pinned hash."""
        if not self.path.is_file():
            raise AdapterIntegrityError(f"steering adapter {str(self.path)!r}: file not found")
        digest = hashlib.sha256()
        with self.path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        actual = digest.hexdigest()
        if self.sha256 is not None and actual != self.sha256:
            raise AdapterIntegrityError(
                f"steering adapter {str(self.path)!r}: sha256 is {actual}, "
                f"the policy pins {self.sha256}; refusing to start"
            )
        return actual


class SteeringPolicy(_Strict):
    """Adapters on the UNet; ``window`` is the fraction of denoising steps they act in."""

    adapters: list[AdapterSpec] = Field(default_factory=list)
    mode: Literal["dynamic", "fused"] = "dynamic"
    window: tuple[Score, Score] = (0.0, 1.0)

    @field_validator("window")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"window start must be below its end, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> SteeringPolicy:
        names = [a.adapter_name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter names must be unique, repeated: {dupes}")
        return self


def _default_categories() -> dict[Category, CategoryRule]:
    # Minors alone are not harmful; the engine's hard rule blocks them combined with sexual.
    return {Category.MINORS: CategoryRule(threshold=MINORS_MAX_THRESHOLD, action=Action.ALLOW)}


class Policy(_Strict):
    """A whole policy file. See the README's policy reference for every field."""

    version: Literal[1] = 1
    name: str = "custom"
    description: str = ""
    categories: dict[Category, CategoryRule] = Field(default_factory=_default_categories)
    classifiers: list[ImageClassifierConfig] = Field(default_factory=list)
    prompt: PromptPolicy = Field(default_factory=PromptPolicy)
    escalation: Escalation = Field(default_factory=Escalation)
    on_error: Action = Action.BLOCK
    audit: AuditSettings = Field(default_factory=AuditSettings)
    steering: SteeringPolicy = Field(default_factory=SteeringPolicy)
    blur: BlurSettings = Field(default_factory=BlurSettings)

    @field_validator("on_error")
    @classmethod
    def _fail_closed(cls, value: Action) -> Action:
        if value in (Action.ALLOW, Action.REGENERATE):
            raise ValueError(
                f"on_error must fail closed (blur, replace or block), got {value.value!r}"
            )
        return value

    @field_validator("categories")
    @classmethod
    def _minors_never_relaxed(
        cls, value: dict[Category, CategoryRule]
    ) -> dict[Category, CategoryRule]:
        rule = value.get(Category.MINORS)
        if rule is None:
            return {**value, **_default_categories()}
        if rule.threshold > MINORS_MAX_THRESHOLD:
            raise ValueError(
                f"minors.threshold {rule.threshold} would relax the minors check: sexual content "
                f"involving minors is always blocked, and the minors threshold may not exceed "
                f"{MINORS_MAX_THRESHOLD}"
            )
        return value

    def rule_for(self, category: Category) -> CategoryRule | None:
        """The image rule for ``category``, or None when the policy does not act on it."""
        return self.categories.get(category)

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Read a YAML or JSON policy; relative adapter/audit paths resolve against its folder."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise PolicyError(f"{path}: cannot read policy file ({e.strerror or e})") from e
        return cls.from_text(text, source=path)

    @classmethod
    def from_text(cls, text: str, *, source: Path | str = "<string>") -> Policy:
        """Parse YAML/JSON ``text``; ``source`` names it in errors and anchors relative paths."""
        source = Path(source)
        try:
            data = json.loads(text) if source.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as e:
            raise PolicyError(f"{source}: not valid {_format_name(source)}: {e}") from e
        if not isinstance(data, dict):
            raise PolicyError(
                f"{source}: a policy must be a mapping of keys, got {type(data).__name__}"
            )
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: Path | str = "<dict>") -> Policy:
        """Validate a mapping, with errors formatted like :meth:`from_file`'s."""
        source = Path(source)
        try:
            policy = cls.model_validate(data)
        except ValidationError as e:
            raise PolicyError(format_validation_error(source, e)) from e
        return policy._resolved(source.parent if source.name != "<dict>" else Path.cwd())

    @classmethod
    def preset(cls, name: str) -> Policy:
        """One of the bundled presets: ``strict``, ``balanced`` or ``permissive``."""
        if name not in PRESETS:
            raise PolicyError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        ref = resources.files("safety_lora.policies").joinpath(f"{name}.yaml")
        with resources.as_file(ref) as path:
            return cls.from_file(path)

    @classmethod
    def load(cls, name_or_path: str | Path) -> Policy:
        """A preset name or a policy file path (what the CLI's ``--policy`` takes)."""
        if isinstance(name_or_path, str) and name_or_path in PRESETS:
            return cls.preset(name_or_path)
        return cls.from_file(name_or_path)

    def _resolved(self, base: Path) -> Policy:
        adapters = [
            a if a.path.is_absolute() else a.model_copy(update={"path": (base / a.path).resolve()})
            for a in self.steering.adapters
        ]
        audit = self.audit
        if audit.path is not None and not audit.path.is_absolute():
            audit = audit.model_copy(update={"path": (base / audit.path).resolve()})
        steering = self.steering.model_copy(update={"adapters": adapters})
        return self.model_copy(update={"steering": steering, "audit": audit})


def _format_name(source: Path) -> str:
    return "JSON" if source.suffix == ".json" else "YAML"


def format_validation_error(source: Path, error: ValidationError) -> str:
    """One line per problem: ``file: dotted.path: message (got value)``."""
    lines = []
    for err in error.errors(include_url=False):
        # pydantic puts the union tag in the path (classifiers.0.nudenet.x): not a user key.
        parts = [
            str(p)
            for i, p in enumerate(err["loc"])
            if not (p in KINDS and i > 0 and isinstance(err["loc"][i - 1], int))
        ]
        loc = ".".join(parts) or "<root>"
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        value = "" if isinstance(shown, dict) else f" (got {shown!r})"
        lines.append(f"{source}: {loc}: {message}{value}")
    return "\n".join(lines)
