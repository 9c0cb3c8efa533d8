"""Closed-form tests write their start-up cache to a temporary folder, never ``~/.cache``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFETY_LORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
