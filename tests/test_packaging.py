"""A built wheel holds the whole package and works without the source tree.

The editable install the tests run on maps the source folders, so it hides a package missing
from the wheel; here the wheel is built, installed apart from the checkout (its dependencies
from this environment, no editable finder), and used as a user would: ``--help`` of every
command and the demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # make test-fast leaves it out

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]

#: Run inside the installed wheel: every command's --help, then the demo.
USE = """
import json, sys
from typer.main import get_command
from typer.testing import CliRunner
import safety_lora
from safety_lora.cli import app
runner = CliRunner()
codes = {}
for name in sorted(get_command(app).commands):
    group = get_command(app).commands[name]
    for sub in [None, *sorted(getattr(group, "commands", {}))]:
        argv = [name, *([sub] if sub else []), "--help"]
        codes[" ".join(argv)] = runner.invoke(app, argv).exit_code
demo = runner.invoke(app, ["demo", "--out", sys.argv[1]])
print(json.dumps({"file": safety_lora.__file__, "help": codes, "demo": demo.exit_code,
                  "demo_output": demo.output}))
"""


def build_wheel(out: Path) -> Path:
    """The project's wheel, built from the checkout into ``out``."""
    subprocess.run(
        [*PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("safety_lora-*.whl")
    return found


def source_packages() -> set[str]:
    """Every package of the source tree, by its installed name."""
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "safety_lora").rglob("__init__.py")
    }
    return found | {"safety_lora.classifiers", "safety_lora.policies"}


def test_the_wheel_holds_everything_and_runs_apart_from_the_checkout(tmp_path: Path) -> None:
    """One test (under xdist, two would build in the checkout's build/ side by side)."""
    wheel = build_wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {"/".join(n.split("/")[:-1]).replace("/", ".") for n in names if n.endswith(".py")}
    assert source_packages() <= packaged, sorted(source_packages() - packaged)
    for data in (
        "safety_lora/policies/balanced.yaml",
        "safety_lora/demo/policy.yaml",
        "safety_lora/models/concept_world/model_index.json",
        "safety_lora/models/adapters/concept_world_erase_red.safetensors",
    ):
        assert data in names
    site = tmp_path / "site"
    subprocess.run(
        [*PIP, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # -S: no site-packages processing, so the checkout's editable finder is not loaded; the
    # dependencies come from this environment's site-packages, after the wheel's copy.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_path("purelib")])}
    run = subprocess.run(
        [sys.executable, "-S", "-c", USE, str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert Path(result["file"]).is_relative_to(site)
    failed = {argv: code for argv, code in result["help"].items() if code != 0}
    assert not failed and len(result["help"]) >= 12, result["help"]
    assert result["demo"] == 0, result["demo_output"]
    assert (tmp_path / "demo" / "grid.png").is_file()
