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


def test_the_cross_attention_measure_tells_them_apart_without_a_denoiser_pass(
    adapters: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    probes = policy_probes(demo_policy().steering)
    reteach_pipe = _with(adapters["reteach"], "mine")

    def no_denoiser(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cross-attention measure ran the UNet")

    monkeypatch.setattr(reteach_pipe.unet, "forward", no_denoiser)
    reteach = screen(reteach_pipe, "mine", probes, measure="cross_attention")
    benign = screen(_with(adapters["benign"], "mine"), "mine", probes, measure="cross_attention")
    assert reteach.measure == benign.measure == "cross_attention"
    assert reteach.unread == benign.unread == 0  # closed-form edits: keys and values only
    bad, good = reteach.worst, benign.worst
    assert bad is not None and good is not None
    assert bad.shift > 0.8 and good.shift < 0.15  # measured 1.00 and 0.09
    assert bad.shift == bad.worst and "blue" in bad.worst_probe  # the rule reads the worst probe
    eraser = _with(Path("safety_lora/models/adapters/concept_world_erase_red.safetensors"), "esd")
    shipped = screen(eraser, "esd", probes, measure="cross_attention").worst
    assert shipped is not None and shipped.shift < 0.1


def test_the_cross_attention_measure_is_linear_in_strength_and_counts_what_it_cannot_read(
    adapters: dict[str, Path],
) -> None:
    from peft import LoraConfig

    probes = policy_probes(demo_policy().steering)
    pipe = _with(adapters["reteach"], "mine")
    full = screen(pipe, "mine", probes, measure="cross_attention").worst
    pipe.set_adapters(["mine"], [0.5])
    half = screen(pipe, "mine", probes, measure="cross_attention").worst
    assert full is not None and half is not None
    assert half.shift == pytest.approx(full.shift / 2, rel=1e-4)
    pipe = concept_world()
    pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]), adapter_name="wide")
    wide = screen(pipe, "wide", probes, measure="cross_attention")
    to_q = [n for n, _ in pipe.unet.named_modules() if n.endswith(("attn1.to_q", "attn2.to_q"))]
    to_v1 = [n for n, _ in pipe.unet.named_modules() if n.endswith("attn1.to_v")]
    assert wide.unread == len(to_q) + len(to_v1) > 0
    # a fresh LoRA's up weights are zero: it moves nothing yet
    assert wide.worst is not None and wide.worst.shift == 0.0


def test_auto_measures_small_unets_with_the_denoiser_and_large_ones_by_cross_attention(
    adapters: dict[str, Path],
) -> None:
    from types import SimpleNamespace

    from safety_lora.steering.screening import screen_measure

    def unet(size: int) -> Any:
        return SimpleNamespace(config=SimpleNamespace(sample_size=size))

    assert screen_measure(unet(16)) == "denoiser"
    assert screen_measure(unet(64)) == screen_measure(unet(128)) == "cross_attention"
    assert screen_measure(unet(64), "denoiser") == "denoiser"
    safe = SafePipeline(
        _with(adapters["benign"], "mine"), _policy(measure="cross_attention", max_shift=0.3)
    )
    record = safe.steering.screened["mine"]
    assert record["measure"] == "cross_attention" and record["action"] == "allow"
    assert record["unread_layers"] == 0 and record["shifts"][0]["shift"] < 0.15
    safe.close()
    with pytest.raises(ValueError, match="measure"):
        _policy(measure="fast")
