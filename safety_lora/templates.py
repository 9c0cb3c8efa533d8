"""Prompt templates: a concept put into prompts (``"a {} square"`` -> ``"a red square"``)."""

from __future__ import annotations

import re

__all__ = ["check_template", "fill_template"]

_SPACES = re.compile(r"\s+")


def fill_template(template: str, word: str) -> str:
    """``template`` with ``word`` at ``{}``, whitespace collapsed (so removal leaves no gap)."""
    return _SPACES.sub(" ", template.replace("{}", word)).strip()


def check_template(template: str) -> str:
    """``template`` itself when it has exactly one ``{}`` slot, else a ``ValueError``."""
    if template.count("{}") != 1:
        raise ValueError(f"each template needs exactly one '{{}}', got {template!r}")
    return template
