"""The policy file schema: pydantic v2 models, strict (unknown keys rejected) and frozen.

A policy says which classifiers judge prompts and images, what each harm category's
threshold and action are, how hard to steer, how to escalate, and what to audit.
Load one with :meth:`Policy.from_file` or :meth:`Policy.preset`.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from safety_lora.classifiers.config import cascade_problems, resolve_local
from safety_lora.classifiers.learned_prompt import LearnedPromptConfig
from safety_lora.classifiers.registry import (
    IMAGE_CONFIGS,
    IMAGE_KINDS,
    KINDS,
    PROMPT_CONFIGS,
    PROMPT_KINDS,
    ImageClassifierConfig,
    PromptClassifierConfig,
)
from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.taxonomy import Action, Category
from safety_lora.textfiles import (
    MAX_FILE_BYTES,
    Terms,
    TextFileError,
    brief_repr,
    load_mapping,
    read_text,
)

__all__ = [
    "MINORS_MAX_THRESHOLD",
    "PRESETS",
    "AdapterSpec",
    "AuditSettings",
    "BlurSettings",
    "CategoryRule",
    "ClosedFormSpec",
    "Escalation",
    "InputPolicy",
    "InputRule",
    "Policy",
    "PolicyError",
    "PromptPolicy",
    "PromptRule",
    "ReviewRule",
    "ReviewSettings",
    "SLDGuidance",
    "SteeringAdapter",
    "SteeringPolicy",
    "TextSteering",
    "UserAdapterRule",
]

#: The bundled presets, shipped as ``policies/<name>.yaml``.
PRESETS = ("strict", "balanced", "permissive")

#: No policy may make the ``minors`` detector less sensitive than this.
MINORS_MAX_THRESHOLD = 0.5

Score = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]


class PolicyError(ValueError):
    """A policy file could not be read or validated; the message names file, path and value."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CategoryRule(_Strict):
    """What happens to an image whose score in this category reaches ``threshold``."""

    threshold: Score = 0.5
    action: Action = Action.BLOCK


#: What an unsafe input image gets: the request refused, or generation goes on from the input
#: blurred / replaced by a neutral placeholder, or the input used as it is.
InputAction = Literal["refuse", "blur", "replace", "allow"]


class InputRule(_Strict):
    """One category's rule for input images: ``action`` from ``threshold`` (``None``: the
    image rule's threshold for the category, as outputs are judged)."""

    threshold: Score | None = None
    action: InputAction = "refuse"


class InputPolicy(_Strict):
    """The check of images a request brings (image-to-image, inpainting, ControlNet, image
    prompts): judged by the policy's image classifiers before anything is generated.

    A category the policy acts on (its image action is not ``allow``) flags an input from the
    image rule's threshold, and the input gets ``action``; ``categories`` overrides both per
    category. Sexual content involving minors is always refused, whatever this says.
    """

    action: InputAction = "refuse"
    categories: dict[Category, InputRule] = Field(default_factory=dict)


class PromptRule(_Strict):
    """Prompt risk levels for one category: steer from ``steer_at``, refuse from ``refuse_at``
    (``None``: never, e.g. ``minors`` alone, which is not unsafe)."""

    steer_at: Score | None = 0.8
    refuse_at: Score | None = None


def _default_prompt_classifiers() -> list[PromptClassifierConfig]:
    return [LearnedPromptConfig()]


class PromptPolicy(_Strict):
    """The check before generation: prompt classifiers and per-category risk rules."""

    classifiers: list[PromptClassifierConfig] = Field(default_factory=_default_prompt_classifiers)
    rules: dict[Category, PromptRule] = Field(default_factory=dict)
    #: A prompt written mostly in scripts other than Latin, which the bundled model cannot
    #: read (its rules know some terms of 20 languages): allowed, steered or refused.
    unreadable: Literal["allow", "steer", "refuse"] = "steer"

    @field_validator("classifiers")
    @classmethod
    def _some_classifier(cls, value: list[PromptClassifierConfig]) -> list[PromptClassifierConfig]:
        if not value:
            raise ValueError(
                "a policy needs at least one prompt classifier: without one no prompt is "
                "checked and the minors+sexual rule cannot fire (kinds: "
                f"{', '.join(PROMPT_KINDS)})"
            )
        return value

    def scored(self) -> frozenset[Category]:
        """The categories some prompt classifier of this policy scores."""
        return frozenset().union(*(c.categories() for c in self.classifiers))

    def rule(self, category: Category) -> PromptRule:
        """The rule for ``category`` (the default rule when the policy names none)."""
        return self.rules.get(category, PromptRule())


class Escalation(_Strict):
    """Regeneration: up to ``max_attempts`` generations, attempt k steering at ``ladder[k-1]``x.

    When the ladder is shorter than ``max_attempts`` its last multiplier repeats. An image
    still flagged ``regenerate`` at the last attempt gets ``final_action``. A regeneration is
    steered by the flagged image's scores as well as the prompt's risk. ``seed: same``
    regenerates from the image's own seed and initial noise (the picture keeps its
    composition, steered harder); ``derived`` draws a new seed per attempt.
    """

    max_attempts: StrictInt = Field(default=3, ge=1, le=10)
    ladder: list[Annotated[StrictFloat, Field(gt=0.0, le=10.0)]] = Field(
        default_factory=lambda: [1.0, 1.5, 2.0], min_length=1
    )
    final_action: Action = Action.BLOCK
    seed: Literal["same", "derived"] = "same"

    @field_validator("final_action")
    @classmethod
    def _final_is_terminal(cls, value: Action) -> Action:
        if value is Action.REGENERATE:
            raise ValueError("final_action cannot be 'regenerate' (it is the last attempt)")
        return value

    def multiplier(self, attempt: int) -> float:
        """Steering multiplier for the 1-based ``attempt``."""
        return self.ladder[min(attempt, len(self.ladder)) - 1]


class ReviewRule(_Strict):
    """Hold an image for a person when its ``category`` score lies in ``between`` [lo, hi)
    (a band reaching 1.0 holds 1.0 too): the caller gets ``interim`` (blur, replace or block)
    and a review id meanwhile."""

    category: Category
    between: tuple[Score, Score]
    interim: Literal["blur", "replace", "block"] = "blur"

    @field_validator("between")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"`between` must be [low, high) with low < high, got {list(value)}")
        return value


class ReviewSettings(_Strict):
    """Human review: which images are held (``rules``), where held images are stored
    (``store``: a folder, relative to the policy file, or an fsspec URL) and where the queue
    lives (``database``: an SQLAlchemy URL; default an SQLite file in the store folder; a
    PostgreSQL URL when several replicas share one queue)."""

    rules: list[ReviewRule] = Field(default_factory=list)
    store: str = Field(default="review", validate_default=True)  # by the policy file, too
    database: str | None = None

    @field_validator("store")
    @classmethod
    def _store_relative_to_policy(cls, value: str, info: ValidationInfo) -> str:
        return value if "://" in value else resolve_local(value, info)

    def band(self, category: Category, score: float) -> ReviewRule | None:
        """The first rule holding ``category`` at ``score``, or None."""
        for rule in self.rules:
            lo, hi = rule.between
            if rule.category is category and (lo <= score < hi or score == hi == 1.0):
                return rule
        return None


class AuditSettings(_Strict):
    """The JSONL audit log: one line per final decision. No ``path`` means no log file."""

    path: Path | None = None
    include_prompt: StrictBool = False

    @field_validator("path")
    @classmethod
    def _relative_to_policy(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else Path(resolve_local(str(value), info))


class BlurSettings(_Strict):
    """How ``blur`` renders: radius and box padding, as fractions of the image's short side."""

    radius: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] = 0.08
    region_padding: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = 0.1


class _Strength(_Strict):
    """How strongly one steering method acts on a request (adapters and guidance alike).

    Strength for a request is ``min(max_scale, (scale + risk_boost * risk) * ladder[attempt])``,
    where ``risk`` is the prompt's highest risk among the method's ``categories``.
    """

    name: str | None = None
    categories: list[Category] = Field(min_length=1)
    scale: Annotated[StrictFloat, Field(ge=0.0, le=10.0)] = 1.0
    risk_boost: Annotated[StrictFloat, Field(ge=0.0, le=10.0)] = 0.0
    max_scale: Annotated[StrictFloat, Field(gt=0.0, le=10.0)] = 2.0


class AdapterSpec(_Strength):
    """A steering adapter file (any format the project reads), optionally pinned by sha256."""

    path: Path
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    #: Skip the file's text-encoder part (``lora_te*`` / ``text_encoder.`` keys); without it
    #: that part goes onto the pipeline's text encoders, and a pipeline without them is an error.
    unet_only: bool = False

    @field_validator("path")
    @classmethod
    def _relative_to_policy(cls, value: Path, info: ValidationInfo) -> Path:
        return Path(resolve_local(str(value), info))

    @property
    def adapter_name(self) -> str:
        """The name the adapter gets on the UNet (``name`` or the file's stem)."""
        return self.name or self.path.stem.replace(".", "_")


class ClosedFormSpec(_Strength):
    """An adapter solved for the wrapped model at start-up from concepts (UCE family), cached.

    ``closed_form`` holds what to erase and how (see :class:`ClosedFormConfig`).
    """

    closed_form: ClosedFormConfig

    @field_validator("closed_form")
    @classmethod
    def _no_attack_rounds(cls, value: ClosedFormConfig) -> ClosedFormConfig:
        if value.attack_rounds:
            raise ValueError(
                f"`attack_rounds` {value.attack_rounds}: start-up never runs attack rounds; make "
                f"the hardened edit offline (`safety-lora erase ... --attack-rounds "
                f"{value.attack_rounds} --out FILE.safetensors`, extra `workbench`) and name "
                f"that file in `steering.adapters` (`path:`)"
            )
        return value

    @property
    def adapter_name(self) -> str:
        """``name``, or ``closed_form_`` and the first concept (non-alphanumerics as ``_``)."""
        return self.name or "closed_form_" + re.sub(r"\W+", "_", self.closed_form.erase[0])


def _steering_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "closed_form" if "closed_form" in value else "file"
    return "closed_form" if isinstance(value, ClosedFormSpec) else "file"


#: One ``steering.adapters`` entry: a file (``path``) or concepts solved at start-up.
SteeringAdapter = Annotated[
    Annotated[AdapterSpec, Tag("file")] | Annotated[ClosedFormSpec, Tag("closed_form")],
    Discriminator(_steering_kind),
]


class SLDGuidance(_Strength):
    """Safe Latent Diffusion guidance away from ``concepts``: one more UNet pass per step.

    ``preset`` is one of SLD's (diffusers' ``SafetyConfig``); the request's strength scales
    SLD's correction (0: off, the pipeline untouched; 1: the preset).
    """

    kind: Literal["sld"] = "sld"
    preset: Literal["weak", "medium", "strong", "max"] = "medium"
    concepts: Terms = Field(min_length=1)

    @property
    def adapter_name(self) -> str:
        """The name its strength goes by in decisions (``name`` or ``sld``)."""
        return self.name or "sld"

    @property
    def concept(self) -> str:
        """The safety concept SLD guides away from: the concepts, comma-separated."""
        return ", ".join(self.concepts)


class TextSteering(_Strength):
    """Text-embedding steering (after Semantic Surgery): ``concepts`` are measured in each token
    of the prompt's text embedding and taken out before the denoiser sees it.

    No extra denoiser pass. A token counts when its cosine with a concept's direction (the mean
    of ``E(concept) - E(anchor)`` over positions) reaches ``threshold``; its coordinates along
    the directions present are moved to the anchor's, times the request's strength (0: off).
    """

    kind: Literal["embedding"] = "embedding"
    concepts: Terms = Field(min_length=1)
    #: What a concept is steered to, and the neutral prompt its direction is measured from.
    anchor: str = ""
    threshold: Annotated[StrictFloat, Field(ge=-1.0, le=1.0)] = 0.4

    @property
    def adapter_name(self) -> str:
        """The name its strength goes by in decisions (``name`` or ``embedding``)."""
        return self.name or "embedding"


#: How a user adapter is screened (:mod:`safety_lora.steering.screening`).
ScreenMeasure = Literal["auto", "cross_attention", "denoiser"]


class UserAdapterRule(_Strict):
    """What a user's own adapter on the wrapped pipeline gets when, screened at wrap time
    (:mod:`safety_lora.steering.screening`), it moves the model toward a concept this policy
    erases by ``max_shift`` or more (1: as far as naming the concept): ``refuse`` (wrapping
    fails, naming the adapter), ``cap`` (its strength scaled down to ``max_shift``) or
    ``allow`` (recorded only). ``measure``: ``cross_attention`` (no denoiser pass; reads the
    adapter's cross-attention keys and values only), ``denoiser`` (every layer, at the cost of
    UNet passes) or ``auto`` (the denoiser on small UNets such as the embedded model,
    cross-attention on SD 1.x/SDXL); ``benchmarks/screening_cost.py`` times both."""

    max_shift: Annotated[StrictFloat, Field(gt=0.0, le=10.0)] = 0.3
    action: Literal["refuse", "cap", "allow"] = "refuse"
    measure: ScreenMeasure = "auto"


class SteeringPolicy(_Strict):
    """How the denoiser is steered: adapters on the UNet, SLD guidance, text-embedding steering.

    ``window`` is the fraction of denoising steps the adapters act in; ``mode: fused`` folds
    their base strengths into the weights (no per-step cost).
    """

    adapters: list[SteeringAdapter] = Field(default_factory=list)
    guidance: SLDGuidance | None = None
    #: Text-embedding steering: the prompt's embedding steered before the denoiser.
    text: TextSteering | None = None
    mode: Literal["dynamic", "fused"] = "dynamic"
    window: tuple[Score, Score] = (0.0, 1.0)
    #: Screen the user's own adapters at wrap time (None: not screened; what it costs: see
    #: :class:`UserAdapterRule`'s ``measure``).
    user_adapters: UserAdapterRule | None = None

    @field_validator("window")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"window start must be below its end, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> SteeringPolicy:
        dupes = sorted(n for n, k in Counter(self.names).items() if k > 1)
        if dupes:
            raise ValueError(f"steering names must be unique, repeated: {dupes}")
        if self.mode == "fused" and tuple(self.window) != (0.0, 1.0):
            raise ValueError(
                f"`window` must be [0.0, 1.0] in fused mode (fused weights cannot switch per "
                f"step), got {list(self.window)}"
            )
        return self

    @property
    def methods(self) -> list[AdapterSpec | ClosedFormSpec | SLDGuidance | TextSteering]:
        """Every steering method, adapters first: what the engine sets a strength for."""
        optional = [m for m in (self.guidance, self.text) if m is not None]
        return [*self.adapters, *optional]

    @property
    def names(self) -> list[str]:
        """The names strengths go by (adapter names on the UNet, then guidance's and text's)."""
        return [m.adapter_name for m in self.methods]


def _default_categories() -> dict[Category, CategoryRule]:
    # Minors alone are not harmful; the engine's hard rule blocks them combined with sexual.
    return {Category.MINORS: CategoryRule(threshold=MINORS_MAX_THRESHOLD, action=Action.ALLOW)}


class Policy(_Strict):
    """A whole policy file. See the README's policy reference for every field."""

    version: Literal[1] = 1
    name: str = "custom"
    description: str = ""
    categories: dict[Category, CategoryRule] = Field(default_factory=_default_categories)
    classifiers: list[ImageClassifierConfig] = Field(default_factory=list, validate_default=True)
    unjudged: list[Category] = Field(default_factory=list)
    multi_frame: Literal["judge_all", "refuse"] = "judge_all"
    max_frames: Annotated[StrictInt, Field(ge=1, le=10_000)] = 64
    prompt: PromptPolicy = Field(default_factory=PromptPolicy)
    inputs: InputPolicy = Field(default_factory=InputPolicy)
    escalation: Escalation = Field(default_factory=Escalation)
    on_error: Action = Action.BLOCK
    audit: AuditSettings = Field(default_factory=AuditSettings)
    review: ReviewSettings = Field(default_factory=ReviewSettings)
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

    @field_validator("classifiers")
    @classmethod
    def _some_image_classifier(
        cls, value: list[ImageClassifierConfig]
    ) -> list[ImageClassifierConfig]:
        if not value:
            raise ValueError(
                "a policy needs at least one image classifier: a policy that judges no image "
                f"is not a policy (kinds: {', '.join(IMAGE_KINDS)})"
            )
        return value

    @model_validator(mode="after")
    def _every_category_judged(self) -> Policy:
        """No silent categories: an acted-on category is scored by a classifier, or listed."""
        image, prompt = self.scored_on_images(), self.prompt.scored()
        listed = set(self.unjudged)
        problems = []
        for category, rule in self.categories.items():
            if rule.action is not Action.ALLOW and category not in image | listed:
                problems.append(
                    f"categories.{category}: action {rule.action}, but no image classifier "
                    f"here scores {category} ({_scores(self.classifiers)}); kinds that can: "
                    f"{_able(IMAGE_CONFIGS, category)}; or list it in `unjudged`"
                )
        for category in self.prompt.rules:
            if category not in prompt | listed:
                problems.append(
                    f"prompt.rules.{category}: no prompt classifier here scores {category} "
                    f"({_scores(self.prompt.classifiers)}); kinds that can: "
                    f"{_able(PROMPT_CONFIGS, category)}; or list it in `unjudged`"
                )
        for category, input_rule in self.inputs.categories.items():
            if input_rule.action != "allow" and category not in image | listed:
                problems.append(
                    f"inputs.categories.{category}: action {input_rule.action}, but no image "
                    f"classifier here scores {category} ({_scores(self.classifiers)}); or "
                    f"list it in `unjudged`"
                )
        for i, review_rule in enumerate(self.review.rules):
            if review_rule.category not in image:
                problems.append(
                    f"review.rules[{i}].category: {review_rule.category} is scored by no image "
                    f"classifier here ({_scores(self.classifiers)}): the rule could never hold"
                )
        for category in listed & image & prompt:
            problems.append(
                f"unjudged: {category} is scored on images and on prompts here; remove it"
            )
        problems += cascade_problems(self.classifiers, self.prompt.classifiers)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def scored_on_images(self) -> frozenset[Category]:
        """The categories some image classifier of this policy scores."""
        return frozenset().union(*(c.categories() for c in self.classifiers))

    def unjudged_images(self) -> tuple[Category, ...]:
        """Every category no image classifier of this policy scores (listed in decisions)."""
        scored = self.scored_on_images()
        return tuple(c for c in Category if c not in scored)

    def unjudged_prompts(self) -> tuple[Category, ...]:
        """Every category no prompt classifier of this policy scores."""
        scored = self.prompt.scored()
        return tuple(c for c in Category if c not in scored)

    def sha256(self) -> str:
        """The policy's identity: sha256 of its canonical JSON, the audit path left out (where
        lines are written is not what is decided; replicas write files of their own)."""
        data = self.model_dump_json(exclude={"audit": {"path"}})
        return hashlib.sha256(data.encode("utf-8")).hexdigest()

    def rule_for(self, category: Category) -> CategoryRule | None:
        """The image rule for ``category``, or None when the policy does not act on it."""
        return self.categories.get(category)

    def input_rule_for(self, category: Category) -> tuple[float, InputAction] | None:
        """(threshold, action) for an input image scored in ``category``; None: not acted on."""
        own = self.inputs.categories.get(category)
        image = self.categories.get(category)
        if own is not None:
            fallback = image.threshold if image is not None else CategoryRule().threshold
            return (own.threshold if own.threshold is not None else fallback), own.action
        if image is None or image.action is Action.ALLOW:
            return None
        return image.threshold, self.inputs.action

    # -- loading ---------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        """Read a YAML or JSON policy; relative adapter/audit paths resolve against its folder."""
        path = Path(path)
        try:
            text = read_text(path, max_bytes=MAX_FILE_BYTES)
        except TextFileError as e:
            raise PolicyError(f"{e} (policy file)") from e
        return cls.from_text(text, source=path)

    @classmethod
    def from_text(cls, text: str, *, source: Path | str = "<string>") -> Policy:
        """Parse YAML/JSON ``text``; ``source`` names it in errors and anchors relative paths."""
        source = Path(source)
        try:
            data = load_mapping(text, source=source)
        except TextFileError as e:
            raise PolicyError(str(e)) from e
        if not isinstance(data, dict):
            raise PolicyError(
                f"{source}: a policy must be a mapping of keys, got {type(data).__name__}"
            )
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: Path | str = "<dict>") -> Policy:
        """Validate a mapping, with errors formatted like :meth:`from_file`'s.

        Relative paths in it (adapters, audit log, rule files, heads, model folders) resolve
        against ``source``'s folder (the working directory for a mapping with no file).
        """
        source = Path(source)
        base = source.parent if source.name not in ("<dict>", "<string>") else Path.cwd()
        try:
            return cls.model_validate(data, context={"base": base.resolve()})
        except ValidationError as e:
            raise PolicyError(format_validation_error(source, e)) from e

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
        path = Path(name_or_path)
        if not path.exists() and not path.suffix and len(path.parts) == 1:
            close = difflib.get_close_matches(str(name_or_path), PRESETS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise PolicyError(
                f"{str(name_or_path)!r} is neither a preset ({', '.join(PRESETS)}) nor a policy "
                f"file{hint}"
            )
        return cls.from_file(name_or_path)


def _scores(configs: list[Any]) -> str:
    """``nudenet: [sexual]``: what each configured classifier scores."""
    return "; ".join(
        f"{c.kind}: [{', '.join(sorted(x.value for x in c.categories()))}]" for c in configs
    )


def _able(configs: tuple[type[Any], ...], category: Category) -> str:
    """The kinds whose configs can be set up to score ``category``, with how."""
    out = []
    for config in configs:
        can = config.CAN_SCORE
        if can is None or category in can:
            how = f" ({config.HOW})" if getattr(config, "HOW", "") else ""
            out.append(config.model_fields["kind"].default + how)
    return ", ".join(out)


#: Union tags pydantic puts in error paths after a list index (not keys the user wrote).
_TAGS = KINDS | {"file", "closed_form"}
#: The most problems one error lists (a list of 10,000 wrong entries has as many).
MAX_PROBLEMS = 20


def format_validation_error(source: Path, error: ValidationError) -> str:
    """One line per problem: ``file: dotted.path: message (got value)``; a long value is
    shown cut (:func:`~safety_lora.textfiles.brief_repr`), never expanded in full, and past
    :data:`MAX_PROBLEMS` problems only their count."""
    lines: list[str] = []
    errors = error.errors(include_url=False)
    for err in errors[:MAX_PROBLEMS]:
        # pydantic puts the union tag in the path (classifiers.0.nudenet.x): not a user key.
        parts = [
            str(p)
            for i, p in enumerate(err["loc"])
            if not (p in _TAGS and i > 0 and isinstance(err["loc"][i - 1], int))
        ]
        loc = ".".join(parts)
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        else:
            message = err["msg"].removeprefix("Value error, ")
        shown = err.get("input")
        value = "" if isinstance(shown, dict) else f" (got {brief_repr(shown)})"
        if not loc:  # a whole-policy check: each of its lines names its own path
            lines.extend(f"{source}: {line}" for line in message.splitlines())
            continue
        lines.append(f"{source}: {loc}: {message}{value}")
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"{source}: and {len(errors) - MAX_PROBLEMS:,} more problems")
    return "\n".join(lines)
