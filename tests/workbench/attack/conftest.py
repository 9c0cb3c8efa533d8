"""Attack tests: the embedded model once per module; closed-form solves cached per test, not
in the session cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from safety_lora.models import concept_world


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SAFETY_LORA_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def pipe() -> Any:
    """The embedded model without progress bars, shared by a module's tests."""
    pipe = concept_world()
    pipe.set_progress_bar_config(disable=True)
    return pipe
