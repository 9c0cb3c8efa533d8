"""The import graph keeps its layers: low modules never import the ones built on them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import safety_lora

PACKAGE = Path(safety_lora.__file__).parent


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at top level, under TYPE_CHECKING or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        ("adapters", ("safety_lora.policies", "safety_lora.pipeline", "safety_lora.steering")),
        ("middleware.py", ("safety_lora.service", "fastapi", "starlette")),
        ("asgi.py", ("safety_lora.service", "fastapi", "starlette")),
        ("image_codec.py", ("safety_lora.service", "fastapi", "starlette")),
        ("internals.py", ("safety_lora.",)),
    ],
)
def test_a_lower_layer_imports_nothing_above_it(modules: str, forbidden: tuple[str, ...]) -> None:
    root = PACKAGE / modules
    files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
    assert files
    bad = {
        f"{path.relative_to(PACKAGE)} -> {name}"
        for path in files
        for name in imports(path)
        if name.startswith(forbidden)
    }
    assert not bad, sorted(bad)


def test_no_adapter_format_module_imports_the_registry() -> None:
    for name in ("kohya_format", "lycoris_format", "peft_format", "kohya_keys", "base"):
        found = imports(PACKAGE / "adapters" / f"{name}.py")
        assert "safety_lora.adapters.formats" not in found, name
