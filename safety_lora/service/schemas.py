"""The service's request and response bodies; their models are also its OpenAPI schema.

A class docstring becomes the schema's description, so each is written for API users.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from safety_lora.service.text_limits import TEXT_CHARS_CEILING, BoundedText, bounded_input

__all__ = [
    "GeneratedImage",
    "GenerationRequest",
    "GenerationResponse",
    "ImageModerationRequest",
    "ModerationResponse",
    "ModerationResult",
    "PromptModerationRequest",
    "Safety",
]


class _Body(BaseModel):
    """A request body: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class GenerationRequest(_Body):
    """OpenAI images API request; ``seed`` and ``num_inference_steps`` are extensions."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"prompt": "a red circle", "n": 2, "seed": 7}]}
    )

    prompt: str = Field(
        min_length=1,
        max_length=TEXT_CHARS_CEILING,
        description="at most the server's max_text_chars characters (default 4000)",
    )
    n: int = Field(default=1, ge=1)
    size: str | None = Field(default=None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$")
    response_format: Literal["b64_json"] = "b64_json"
    model: str | None = Field(
        default=None, max_length=256, description="accepted; the service has one model"
    )
    quality: str | None = Field(default=None, max_length=256, description="accepted and ignored")
    style: str | None = Field(default=None, max_length=256, description="accepted and ignored")
    user: str | None = Field(default=None, max_length=256, description="accepted and ignored")
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    num_inference_steps: int | None = Field(default=None, ge=1, le=10_000)


class GeneratedImage(BaseModel):
    """One generated image as the policy let it through: a base64 PNG."""

    b64_json: str
    revised_prompt: str | None = None


class Safety(BaseModel):
    """The request's audit id, its prompt's decision and one decision per image, in order."""

    request_id: str
    prompt: dict[str, Any] | None = None
    decisions: list[dict[str, Any]]


class GenerationResponse(BaseModel):
    """OpenAI images API response; ``safety`` is an extension carrying the decisions."""

    created: int
    data: list[GeneratedImage]
    safety: Safety


class ImageModerationRequest(_Body):
    """Base64 images (or ``data:`` URLs); multipart uploads use ``file`` parts instead."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "input": ["data:image/png;base64,iVBORw0KGgo..."],
                    "prompt": "the prompt the image was made from",
                    "return_images": True,
                }
            ]
        }
    )

    input: str | list[str]
    prompt: BoundedText | None = Field(
        default=None, description="at most the server's max_text_chars characters"
    )
    return_images: bool = Field(default=False, description="include policy-applied images")


class PromptModerationRequest(_Body):
    """One prompt or a list of them, each checked against the policy."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"input": ["a cat on a sofa", "a n.u.d.e portrait"]}]}
    )

    input: Annotated[BoundedText | list[BoundedText], BeforeValidator(bounded_input)] = Field(
        description="at most the server's max_texts texts of max_text_chars characters each"
    )


class ModerationResult(BaseModel):
    """One image's or prompt's verdict: its action, scores per category and whole decision
    (``b64_json``: the image as the policy lets it through, when ``return_images`` asked)."""

    flagged: bool
    action: str
    category_scores: dict[str, float]
    decision: dict[str, Any]
    b64_json: str | None = None


class ModerationResponse(BaseModel):
    """One result per image or prompt, in order; ``policy`` names the policy, ``id`` is the
    request id of its audit lines."""

    id: str
    policy: str
    results: list[ModerationResult]
