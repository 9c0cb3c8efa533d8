"""Attack tests: closed-form solves cached per test, not in the session cache."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFETY_LORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
