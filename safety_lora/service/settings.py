"""``ServiceSettings``: everything the HTTP service is configured with (pydantic, strict)."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from safety_lora.image_codec import DEFAULT_MAX_PIXELS
from safety_lora.policies.schema import PRESETS, Policy, format_validation_error
from safety_lora.provenance import ProvenanceSettings
from safety_lora.service.ray_settings import RaySettings
from safety_lora.service.text_limits import ITEMS_CEILING, TEXT_CHARS_CEILING
from safety_lora.textfiles import load_mapping, read_text

__all__ = ["ServiceSettings", "hash_api_key", "is_loopback"]

KeyHash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
#: Routes that may be served without a key when keys are configured (``/healthz`` always is).
PublicRoute = Literal["/metrics", "/docs", "/redoc", "/openapi.json"]


def hash_api_key(key: str) -> str:
    """The sha256 hex digest a key is stored as (only hashes are ever configured)."""
    if not key:
        raise ValueError("an API key must not be empty")
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServiceSettings(BaseModel):
    """Configuration of ``safety-lora serve``; load a YAML/JSON file with :meth:`from_file`.

    With no ``api_keys`` the service is open, so it may only bind a loopback address.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: str = Field(default="balanced", description="policy file or preset name")
    model: Path | None = Field(
        default=None, description="diffusers pipeline folder; None: the embedded default model"
    )
    generation: bool = Field(
        default=True, description="serve /v1/images/generations (loads the model at start)"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_keys: list[KeyHash] = Field(
        default_factory=list, description="sha256 hex digests of the accepted API keys"
    )
    reviewer_keys: list[KeyHash] = Field(
        default_factory=list,
        description="sha256 hex digests of the keys that may use the review routes (/review, "
        "/v1/review/...); an API key cannot. None: the review routes are off, unless no keys "
        "at all are configured (then the loopback service is open to reviewers too)",
    )
    public_routes: list[PublicRoute] = Field(
        default_factory=list,
        description="served without a key even when api_keys are configured (/healthz always is)",
    )
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_text_chars: int = Field(
        default=4000,
        ge=1,
        le=TEXT_CHARS_CEILING,
        description="characters per text (a prompt, a moderation string or text part); over: 400",
    )
    max_texts: int = Field(
        default=32,
        ge=1,
        le=ITEMS_CEILING,
        description="strings per request (/v1/moderations, /v1/moderations/prompt); over: 400",
    )
    max_parts: int = Field(
        default=32,
        ge=1,
        le=ITEMS_CEILING,
        description="content parts per /v1/moderations request; over: 400",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="request line and headers; over: 431 and the connection is closed",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a request's line and headers must arrive within this of the connection "
        "opening (or of the previous response); else the connection is closed",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="a request's body must arrive within this of its headers; else the "
        "connection is closed",
    )
    keep_alive_timeout_s: int = Field(
        default=5, ge=1, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        default=256,
        ge=1,
        description="open connections; one more is answered 503 and closed at once",
    )
    max_image_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=64)
    max_images: int = Field(default=4, ge=1, le=64, description="images per request (n, input)")
    max_generation_pixels: int | None = Field(
        default=None, ge=64, description="pixels per generated image; None: the model's native size"
    )
    max_steps: int = Field(default=50, ge=1, le=1000, description="denoising steps per request")
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="generation deadline; checked between denoising steps"
    )
    rate_limit_per_minute: float = Field(default=120.0, ge=0.0, description="0: no limit")
    rate_limit_burst: int = Field(default=20, ge=1)
    max_concurrency: int = Field(default=2, ge=1, description="requests worked on at once")
    queue_size: int = Field(default=16, ge=0, description="requests waiting; beyond: 503")
    audit_path: Path | None = Field(
        default=None, description="audit log (JSONL); None: the policy's audit.path"
    )
    shutdown_timeout_s: int = Field(
        default=30,
        ge=1,
        description="on SIGTERM: in-flight work may finish this long, then stops at its next step",
    )

    provenance: ProvenanceSettings = Field(
        default_factory=ProvenanceSettings,
        description="who signs the C2PA manifest of each image returned (default: unsigned record)",
    )
    ray: RaySettings = Field(
        default_factory=RaySettings, description="the layout on Ray Serve (serve --ray)"
    )

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> ServiceSettings:
        if not self.api_keys and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not a loopback address and no api_keys are configured: "
                f"the service would be open to the network. Add an API key hash "
                f"(safety-lora serve hash-key) or bind 127.0.0.1"
            )
        both = sorted(set(self.api_keys) & set(self.reviewer_keys))
        if both:
            raise ValueError(
                f"reviewer_keys: {both[0][:16]}... is an API key too; a reviewer key must be a "
                f"key of its own, so that an API key cannot review"
            )
        return self

    def load_policy(self) -> Policy:
        """The policy to enforce: ``policy`` loaded, its audit path replaced by
        ``audit_path`` when set."""
        policy = Policy.load(self.policy)
        if self.audit_path is None:
            return policy
        audit = policy.audit.model_copy(update={"path": self.audit_path.resolve()})
        return policy.model_copy(update={"audit": audit})

    @classmethod
    def from_file(cls, path: str | Path, **overrides: Any) -> ServiceSettings:
        """Read YAML/JSON settings; ``overrides`` (non-None) win; errors name the file."""
        path = Path(path)
        data = load_mapping(read_text(path), source=path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: settings must be a mapping, got {type(data).__name__}")
        for key in ("policy", "model", "audit_path"):  # relative paths: to the file's folder
            value = data.get(key)
            if isinstance(value, str) and value not in PRESETS and not Path(value).is_absolute():
                data[key] = str(path.parent / value)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, source: str | Path = "<options>"
    ) -> ServiceSettings:
        """Validate ``data``; errors name ``source``, the key and the bad value."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ValueError(format_validation_error(Path(source), e)) from e
