"""Every example in README.md and docs/ runs, and the site builds strictly and renders.

Python blocks run in page order, one namespace per page, in a temporary folder, with
``DiffusionPipeline.from_pretrained`` answering with the embedded model (so "your model" in
the text is a model that exists here). A block with ``<!-- docs-test: skip -->`` on the line
before it (it needs a GPU, real weights, a server) is compiled and its imports run. Every
shell line that runs ``safety-lora`` names a real command, with options that command has.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from safety_lora.cli import app

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SKIP = "<!-- docs-test: skip -->"
FENCE = re.compile(
    r"^(?P<indent> *)```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, text, line and whether it is marked skip."""

    lang: str
    code: str
    line: int
    skip: bool


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        indent = len(match.group("indent"))
        code = "\n".join(line[indent:] for line in match.group("body").splitlines())
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(match.group("lang"), code, line, before == SKIP))
    return found


def _rel(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_the_pages_have_examples() -> None:
    assert (REPO / "README.md").read_text(encoding="utf-8").count("\n") <= 250
    python = [b for page in PAGES for b in blocks(page) if b.lang == "python"]
    assert len(python) >= 20 and sum(not b.skip for b in python) >= 15


@pytest.fixture
def embedded_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``from_pretrained`` of any name gives the embedded model; work in a temporary folder."""
    from diffusers import DiffusionPipeline

    from safety_lora.models import CONCEPT_WORLD_DIR

    real = DiffusionPipeline.from_pretrained

    def embedded(cls: Any, name: Any = None, *args: Any, **kwargs: Any) -> Any:
        pipe = real(
            CONCEPT_WORLD_DIR, local_files_only=True, safety_checker=None,
            requires_safety_checker=False,
        )  # fmt: skip
        pipe.set_progress_bar_config(disable=True)
        return pipe

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(embedded))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_python_examples_run(page: Path, embedded_hub: None) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs:{_rel(page)}"}
    for block in (b for b in blocks(page) if b.lang == "python"):
        where = f"{_rel(page)}:{block.line}"
        tree = compile(block.code, where, "exec", flags=ast.PyCF_ONLY_AST)
        if block.skip:  # compiled, and its imports must resolve
            imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
            exec(compile(ast.Module(imports, []), where, "exec"), {})
            continue
        try:
            exec(compile(tree, where, "exec"), namespace)
        except Exception as e:
            raise AssertionError(f"the example at {where} failed: {type(e).__name__}: {e}") from e


def _shell_lines(code: str) -> list[str]:
    joined = code.replace("\\\n", " ")
    lines = [line.strip().removeprefix("$ ") for line in joined.splitlines()]
    return [line for line in lines if line.startswith("safety-lora")]


def _command(argv: list[str]) -> tuple[list[str], Any]:
    """The (sub)command ``argv`` names and the path to it (typer's vendored click: groups are
    whatever has ``commands``)."""
    command: Any = get_command(app)
    path: list[str] = []
    for word in argv:
        if word not in getattr(command, "commands", {}):
            break
        command = command.commands[word]
        path.append(word)
    return path, command


SHELL = [
    pytest.param(line, id=f"{_rel(page)}:{block.line}:{i}")
    for page in PAGES
    for block in blocks(page)
    if block.lang in ("bash", "sh", "console", "shell")
    for i, line in enumerate(_shell_lines(block.code))
]


@pytest.mark.parametrize("line", SHELL)
def test_shell_examples_name_real_commands_and_options(line: str) -> None:
    from typer.testing import CliRunner

    argv = shlex.split(line.split(" #", 1)[0])[1:]
    path, command = _command(argv)
    assert path, f"{line!r}: no such command"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    params = command.get_params(command.context_class(command))  # late-built options too
    known = {opt for p in params for opt in (*p.opts, *p.secondary_opts)}
    used = {word.split("=", 1)[0] for word in argv if word.startswith("-")}
    assert used <= known, f"{line!r}: {sorted(used - known)} are not options of {path}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    subprocess.run([str(REPO / "scripts" / "package_tree.sh")], check=True)
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.slow
def test_the_site_builds_strictly_fetches_nothing_and_renders(
    site: Path, tmp_path: Path, chromium: Any
) -> None:
    """One test on one build (under xdist two would rebuild build/package side by side)."""
    for page in ("index.html", "reference/api.html", "reference/cli.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    remote = re.compile(r"""<(?:script|link|img)[^>]+(?:src|href)=["']https?://""")
    fetching = [p.name for p in site.rglob("*.html") if remote.search(p.read_text("utf-8"))]
    assert not fetching, fetching
    from selenium.webdriver.common.by import By

    driver = chromium
    driver.get((site / "index.html").as_uri())
    assert "safety-lora" in driver.title
    assert driver.find_element(By.TAG_NAME, "h1").text
    driver.get((site / "reference" / "api.html").as_uri())
    headings = [h.text for h in driver.find_elements(By.CSS_SELECTOR, "h2")]
    assert any("SafePipeline" in h for h in headings), headings
