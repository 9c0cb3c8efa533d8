"""The classifier registry: every plugin's config class, keyed by its ``kind``.

Policy files pick classifiers by ``kind``; pydantic's discriminated unions turn each entry
into the right config class, whose ``build()`` makes the classifier.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from safety_lora.classifiers.clip_concepts import ClipConceptsConfig
from safety_lora.classifiers.concept_world import ConceptWorldConfig
from safety_lora.classifiers.hf_image import HFImageConfig
from safety_lora.classifiers.learned_prompt import LearnedPromptConfig
from safety_lora.classifiers.minilm_prompt import MiniLMPromptConfig
from safety_lora.classifiers.nudenet import NudeNetConfig
from safety_lora.classifiers.prompt_rules import PromptRulesConfig
from safety_lora.classifiers.sd_safety_checker import SDSafetyCheckerConfig
from safety_lora.classifiers.static import StaticImageConfig, StaticPromptConfig
from safety_lora.classifiers.vlm_guard import VLMGuardConfig

IMAGE_CONFIGS = (
    NudeNetConfig,
    ClipConceptsConfig,
    SDSafetyCheckerConfig,
    HFImageConfig,
    ConceptWorldConfig,
    VLMGuardConfig,
    StaticImageConfig,
)
PROMPT_CONFIGS = (LearnedPromptConfig, PromptRulesConfig, MiniLMPromptConfig, StaticPromptConfig)

ImageClassifierConfig = Annotated[
    Union[  # noqa: UP007 - a runtime union built for pydantic's discriminator
        NudeNetConfig,
        ClipConceptsConfig,
        SDSafetyCheckerConfig,
        HFImageConfig,
        ConceptWorldConfig,
        VLMGuardConfig,
        StaticImageConfig,
    ],
    Field(discriminator="kind"),
]
PromptClassifierConfig = Annotated[
    Union[LearnedPromptConfig, PromptRulesConfig, MiniLMPromptConfig, StaticPromptConfig],  # noqa: UP007
    Field(discriminator="kind"),
]

#: The ``kind`` names of image and prompt classifiers, in registry order.
IMAGE_KINDS: tuple[str, ...] = tuple(c.model_fields["kind"].default for c in IMAGE_CONFIGS)
PROMPT_KINDS: tuple[str, ...] = tuple(c.model_fields["kind"].default for c in PROMPT_CONFIGS)
#: Every ``kind`` a policy may name (used to tidy error paths).
KINDS = frozenset((*IMAGE_KINDS, *PROMPT_KINDS))
