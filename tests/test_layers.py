"""The import graph keeps its layers, over the whole installed package.

Every module of ``safety_lora`` (``classifiers`` and ``policies`` included, wherever
setuptools maps them from) is read, and every import it makes (at top level, under
TYPE_CHECKING or inside a function) is checked: the runtime never imports the offline
workbench, and no module imports one of a layer above its own.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import safety_lora
import safety_lora.classifiers
import safety_lora.policies

#: Bottom to top; a module belongs to the first layer one of whose prefixes it starts with.
#: The package root (the public surface) and the workbench are outside the ladder.
LAYERS: list[tuple[str, ...]] = [
    ("taxonomy", "textfiles", "templates", "seeds", "internals", "progress", "console"),
    (
        "classifiers.base",
        "decisions",
        "imaging",
        "audit",
        "image_codec",
        "provenance",
        "inputs",
        "request_images",
        "asgi",
        "adapters",
        "conditioning",
        "prompt_encoder",
        "concept_world",
    ),
    ("models", "loading", "testing", "classifiers", "closed_form"),
    ("policies", "review"),
    ("steering", "guard"),
    ("pipeline", "middleware", "demo", "ray_moderation"),
    ("service",),
    ("cli", "config_cli"),
]
WORKBENCH = "safety_lora.workbench"


def package_files() -> dict[str, Path]:
    """Every module of the installed package by dotted name, from each mapped folder."""
    roots = {
        "safety_lora": Path(safety_lora.__file__).parent,
        "safety_lora.classifiers": Path(safety_lora.classifiers.__file__).parent,
        "safety_lora.policies": Path(safety_lora.policies.__file__).parent,
    }
    found: dict[str, Path] = {}
    for prefix, root in roots.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, inside a function) for every absolute import of the project ``path`` makes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lazy: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lazy |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found += [(name, id(node) in lazy) for name in names if name.startswith("safety_lora")]
    return found


FILES = package_files()


def layer(module: str) -> int | None:
    """The layer of ``module`` (None: the package root or the workbench)."""
    rest = module.removeprefix("safety_lora.")
    for rank, prefixes in enumerate(LAYERS):
        if any(rest == p or rest.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_the_walk_sees_every_part_of_the_package() -> None:
    for module in ("safety_lora.policies.schema", "safety_lora.classifiers.nudenet"):
        assert module in FILES
    unplaced = sorted(
        m for m in FILES if layer(m) is None and m != "safety_lora" and not m.startswith(WORKBENCH)
    )
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"


def test_the_runtime_never_imports_the_workbench() -> None:
    """Only the CLI reaches the workbench: its command modules at load, the rest when run."""
    bad = []
    for module, path in FILES.items():
        if module.startswith(WORKBENCH):
            continue
        for name, inside_function in imports(path):
            if not name.startswith(WORKBENCH):
                continue
            from_cli = module.startswith("safety_lora.cli")
            if from_cli and (inside_function or name.startswith(f"{WORKBENCH}.cli")):
                continue
            bad.append(f"{module} -> {name}")
    assert not bad, sorted(bad)


def test_no_module_imports_a_layer_above_its_own() -> None:
    bad = []
    for module, path in FILES.items():
        own = layer(module)
        if own is None:
            continue
        for name, _ in imports(path):
            target = layer(name)
            if target is not None and target > own:
                bad.append(f"{module} (layer {own}) -> {name} (layer {target})")
    assert not bad, sorted(set(bad))


@pytest.mark.parametrize(
    "statement",
    [
        "import safety_lora",
        "from safety_lora import SafePipeline",
        "from safety_lora.guard import SafetyGuard",
        "from safety_lora.middleware import SafetyMiddleware",
        "import safety_lora.service.app",
    ],
)
def test_a_deployment_loads_no_workbench_module(statement: str) -> None:
    code = (
        f"{statement}; import sys; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith(('safety_lora.workbench', 'matplotlib'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_no_adapter_format_module_imports_the_registry() -> None:
    for name in ("kohya_format", "lycoris_format", "peft_format", "kohya_keys", "base"):
        found = {m for m, _ in imports(FILES[f"safety_lora.adapters.{name}"])}
        assert "safety_lora.adapters.formats" not in found, name


def test_the_workbench_commands_import_the_runtime_cli_only_when_run() -> None:
    """``safety_lora.cli`` registers them at import: a module-level import back is a cycle."""
    bad = [
        f"{module} -> {name}"
        for module, path in FILES.items()
        if module.startswith(f"{WORKBENCH}.cli")
        for name, inside_function in imports(path)
        if not inside_function
        and (name == "safety_lora.cli" or name.startswith("safety_lora.cli."))
    ]
    assert not bad, bad
