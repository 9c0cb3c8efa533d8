"""The public surface is pinned: a change here is a change users see."""

from __future__ import annotations

import subprocess
import sys

import safety_lora


def test_public_names() -> None:
    assert sorted(safety_lora.__all__) == [
        "Action",
        "Category",
        "Decision",
        "GuardedRoute",
        "Policy",
        "PolicyEngine",
        "PolicyError",
        "PromptAction",
        "PromptDecision",
        "PromptRefused",
        "ReviewResult",
        "SafePipeline",
        "SafePipelineOutput",
        "SafetyGuard",
        "SafetyMiddleware",
        "__version__",
    ]
    for name in safety_lora.__all__:
        assert getattr(safety_lora, name) is not None


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, safety_lora, safety_lora.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
