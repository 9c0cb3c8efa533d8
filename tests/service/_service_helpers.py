"""Helpers shared by the service and middleware tests: policies, images, a served app."""

from __future__ import annotations

import base64
import io
import socket
from pathlib import Path

from PIL import Image

#: Prompts with this word are refused (violence risk 1.0 >= refuse_at 0.8).
REFUSED_WORD = "zorblax"


def policy_yaml(path: Path, *, sexual: float, action: str = "replace") -> Path:
    """A deterministic policy: static image scores, prompt rules refusing REFUSED_WORD."""
    path.write_text(
        f"""
name: test-{action}
categories: {{sexual: {{threshold: 0.5, action: {action}}}}}
classifiers: [{{kind: static, scores: {{sexual: {sexual}}}}}]
prompt:
  classifiers: [{{kind: prompt_rules, extra_terms: {{violence: [{REFUSED_WORD}]}}}}]
  rules: {{violence: {{steer_at: 0.3, refuse_at: 0.8}}}}
""",
        encoding="utf-8",
    )
    return path


def png(colour: str = "red", size: tuple[int, int] = (32, 32)) -> bytes:
    """A solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64_image(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


def free_port() -> int:
    """A TCP port nothing listens on right now (127.0.0.1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
