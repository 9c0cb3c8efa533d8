"""Screening a user's adapter against the policy's concepts: refused, capped or allowed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safety_lora.adapters import load_adapter
from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.closed_form.files import erase
from safety_lora.demo import demo_policy
from safety_lora.models import concept_world
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.steering import SteeringError
from safety_lora.steering.screening import policy_probes, screen

SHAPES = ["a {} circle", "a {} square", "a {} triangle", "a {} shape"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A re-teaching adapter (draws red for "blue") and a benign one (squares as triangles)."""
    root = tmp_path_factory.mktemp("user-adapters")
    paper = {"push": 0.0, "lam": 0.5}  # UCE's form: the concept takes the guide's values
    reteach = ClosedFormConfig(erase=["blue"], guide="red", templates=SHAPES, **paper)
    benign = ClosedFormConfig(
        erase=["square"], guide="triangle", templates=["a {}", "a blue {}", "a small {}"], **paper
    )
    return {
        "reteach": erase(reteach, out=root / "blue_to_red.safetensors").path,
        "benign": erase(benign, out=root / "square_to_triangle.safetensors").path,
    }


def _with(path: Path, name: str) -> Any:
    pipe = concept_world()
    load_adapter(pipe.unet, path, adapter_name=name, unet_only=True)
    return pipe


def _policy(**rule: Any) -> Policy:
    data = demo_policy().model_dump(mode="json")
    data["steering"]["user_adapters"] = rule
    return Policy.model_validate(data)


def test_the_screen_tells_a_reteaching_adapter_from_a_benign_one(adapters: dict[str, Path]) -> None:
    probes = policy_probes(demo_policy().steering)
    assert [p.concept for p in probes] == ["red"]
    assert "a circle" in probes[0].probes and "a red circle" in probes[0].prompts
    reteach = screen(_with(adapters["reteach"], "mine"), "mine", probes).worst
    benign = screen(_with(adapters["benign"], "mine"), "mine", probes).worst
    assert reteach is not None and benign is not None
    assert reteach.shift > 0.45 and benign.shift < 0.2  # measured 0.66 and 0.11
    assert "blue" in reteach.worst_probe or reteach.worst > reteach.shift
    eraser = _with(Path("safety_lora/models/adapters/concept_world_erase_red.safetensors"), "esd")
    shipped = screen(eraser, "esd", probes).worst
    assert shipped is not None and shipped.shift < 0.1  # an eraser does not re-teach


def test_a_reteaching_adapter_is_refused_at_wrap_time_and_nothing_is_left_behind(
    adapters: dict[str, Path],
) -> None:
    pipe = _with(adapters["reteach"], "mine")
    with pytest.raises(SteeringError, match=r"your adapter 'mine' moves the model toward 'red'"):
        SafePipeline(pipe, demo_policy())
    assert set(pipe.unet.peft_config) == {"mine"}  # the safety adapters were removed again


def test_a_benign_adapter_passes_and_decisions_record_the_screen(
    adapters: dict[str, Path],
) -> None:
    safe = SafePipeline(_with(adapters["benign"], "mine"), demo_policy())
    out = safe("a blue circle", num_inference_steps=2)
    record = out.decisions[0].user_adapters["mine"]
    assert record["action"] == "allow" and record["factor"] == 1.0
    assert record["shifts"][0]["concept"] == "red" and record["shifts"][0]["shift"] < 0.3
    assert out.decisions[0].to_dict()["user_adapters"]["mine"]["action"] == "allow"
    safe.close()


def test_cap_scales_the_adapter_down_to_the_limit(adapters: dict[str, Path]) -> None:
    pipe = _with(adapters["reteach"], "mine")
    before = next(
        m.scaling["mine"] for m in pipe.unet.modules() if "mine" in getattr(m, "scaling", {})
    )
    safe = SafePipeline(pipe, _policy(action="cap", max_shift=0.3))
    record = safe.steering.screened["mine"]
    shift = record["shifts"][0]["shift"]
    assert record["action"] == "cap" and record["factor"] == pytest.approx(0.3 / shift, rel=1e-3)
    after = next(
        m.scaling["mine"] for m in pipe.unet.modules() if "mine" in getattr(m, "scaling", {})
    )
    assert after == pytest.approx(before * 0.3 / shift, rel=1e-3)
    rescreened = screen(pipe, "mine", policy_probes(demo_policy().steering)).worst
    assert rescreened is not None and rescreened.shift < 0.35  # linear in its strength
    safe.close()


def test_inspect_screen_prints_the_measurement_and_exits_1_when_refused(
    adapters: dict[str, Path], tmp_path: Path
) -> None:
    from safety_lora.cli import app

    policy = tmp_path / "demo.yaml"
    policy.write_text(demo_policy().model_dump_json())
    runner = CliRunner()
    refused = runner.invoke(
        app, ["inspect", str(adapters["reteach"]), "--screen", "--policy", str(policy), "--json"]
    )
    assert refused.exit_code == 1, refused.output
    screening = json.loads(refused.stdout)["screening"]
    assert screening["refused"] and screening["action"] == "refuse"
    assert screening["shifts"][0]["concept"] == "red"
    allowed = runner.invoke(
        app, ["inspect", str(adapters["benign"]), "--screen", "--policy", str(policy)]
    )
    assert allowed.exit_code == 0, allowed.output
    assert "screening against policy concept-world-demo" in allowed.output
    assert "max_shift 0.3: allow" in allowed.output
