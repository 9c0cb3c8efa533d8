"""The HTTP service (``safety-lora serve``): FastAPI + uvicorn, under the ``serve`` extra.

``ServiceSettings`` needs only pydantic; ``create_app``, ``serve`` and ``BackgroundServer``
import FastAPI/uvicorn when first used, with the install hint when they are missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from safety_lora.service.settings import ServiceSettings, hash_api_key, is_loopback

if TYPE_CHECKING:
    from safety_lora.service.app import create_app
    from safety_lora.service.errors import ServiceError
    from safety_lora.service.server import BackgroundServer, serve

__all__ = [
    "BackgroundServer",
    "ServiceError",
    "ServiceSettings",
    "create_app",
    "hash_api_key",
    "is_loopback",
    "serve",
]

_LAZY = {
    "create_app": "safety_lora.service.app",
    "ServiceError": "safety_lora.service.errors",
    "BackgroundServer": "safety_lora.service.server",
    "serve": "safety_lora.service.server",
}
SERVE_HINT = 'the HTTP service needs the serve extra: pip install "safety-lora[serve]"'


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name in ("fastapi", "starlette", "uvicorn", "prometheus_client", "multipart"):
            raise ImportError(f"{SERVE_HINT} ({e.name} is missing)") from e
        raise
