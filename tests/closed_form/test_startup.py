"""Closed-form steering solved at start-up, cached, recorded; SLD as a policy steering mode."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from safety_lora import Policy, SafePipeline
from safety_lora.adapters.loading import sha256_of
from safety_lora.audit import read_audit_log
from safety_lora.closed_form import ClosedFormConfig, solved_adapter
from safety_lora.testing import tiny_pipeline

CONFIG = ClosedFormConfig(erase=["nude"], templates=["a {} person"], preserve=["a dog"])


def _policy(tmp_path: Path, steering: dict[str, Any]) -> Policy:
    return Policy.from_dict(
        {
            "classifiers": [{"kind": "static", "scores": {"sexual": 0.0}}],
            "audit": {"path": str(tmp_path / "audit.jsonl")},
            "steering": steering,
        }
    )


def _entry(**strength: float) -> dict[str, Any]:
    return {"closed_form": CONFIG.model_dump(), "categories": ["sexual"], **strength}


def _images(pipe: Any, prompt: str = "a nude person") -> np.ndarray:
    out = pipe(
        prompt,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return np.asarray(out.images)


def test_the_solve_is_cached_and_reused(_cache: Path) -> None:
    pipe = tiny_pipeline()
    first = solved_adapter(pipe, CONFIG)
    assert not first.reused and first.path.is_file()
    assert first.path.parent == _cache / "closed-form"
    mtime = os.stat(first.path).st_mtime_ns
    second = solved_adapter(pipe, CONFIG)
    assert second.reused and (second.key, second.path) == (first.key, first.path)
    assert os.stat(second.path).st_mtime_ns == mtime


def test_the_cache_is_invalidated_by_the_model_and_the_entry(_cache: Path) -> None:
    pipe = tiny_pipeline()
    key = solved_adapter(pipe, CONFIG).key
    assert solved_adapter(pipe, CONFIG.model_copy(update={"push": 2.0})).key != key
    assert solved_adapter(tiny_pipeline(seed=1), CONFIG).key != key
    norm = pipe.text_encoder.get_submodule("final_layer_norm")
    with torch.no_grad():  # one text-encoder weight changed: its states change
        norm.weight[0] += 0.5
    changed = solved_adapter(pipe, CONFIG)
    assert changed.key != key and not changed.reused
    value = next(m for n, m in pipe.unet.named_modules() if n.endswith("attn2.to_v"))
    with torch.no_grad():  # the text encoder back, one cross-attention value weight changed
        norm.weight[0] -= 0.5
        value.weight[0, 0] += 1.0
    assert solved_adapter(pipe, CONFIG).key not in (key, changed.key)


def test_a_damaged_cache_file_is_solved_again(_cache: Path) -> None:
    pipe = tiny_pipeline()
    first = solved_adapter(pipe, CONFIG)
    first.path.write_bytes(b"not safetensors")
    again = solved_adapter(pipe, CONFIG)
    assert not again.reused and again.key == first.key
    assert again.path.read_bytes()[:8] != b"not safe"


def test_safe_pipeline_solves_on_construction_and_records_the_key(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    safe = SafePipeline(pipe, _policy(tmp_path, {"adapters": [_entry()]}))
    solved = solved_adapter(tiny_pipeline(), CONFIG)  # the same model: the cached file
    assert solved.reused
    out = safe("a nude person", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    decision = out.decisions[0]
    assert decision.closed_form == {"closed_form_nude": solved.key}
    assert decision.adapters == {"closed_form_nude": sha256_of(solved.path)}
    prompt_line, line = read_audit_log(tmp_path / "audit.jsonl")
    assert (prompt_line["kind"], line["kind"]) == ("prompt", "image")
    assert line["closed_form"] == {"closed_form_nude": solved.key}
    assert line["adapters"]["closed_form_nude"] == sha256_of(solved.path)
    assert json.loads(json.dumps(decision.to_dict()))["closed_form"] == line["closed_form"]


def test_strength_zero_is_the_base_model_bit_for_bit(tmp_path: Path) -> None:
    raw = _images(tiny_pipeline())
    off = SafePipeline(tiny_pipeline(), _policy(tmp_path, {"adapters": [_entry(scale=0.0)]}))
    np.testing.assert_array_equal(_images(off), raw)
    on = SafePipeline(tiny_pipeline(), _policy(tmp_path, {"adapters": [_entry(scale=1.0)]}))
    assert np.abs(_images(on) - raw).max() > 1e-3
    assert (
        np.abs(_images(on, "a dog") - _images(off, "a dog")).max() < np.abs(_images(on) - raw).max()
    )  # the preserved prompt moves less than the erased one


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_sld_mode_at_strength_zero_is_the_base_and_steers_above(tmp_path: Path, kind: str) -> None:
    def sld(scale: float) -> dict[str, Any]:
        guidance = {"preset": "max", "concepts": ["nude"], "categories": ["sexual"]}
        return {"guidance": {**guidance, "scale": scale}}

    def run(pipe: Any) -> np.ndarray:
        out = pipe(
            "a nude person",
            num_inference_steps=3,
            guidance_scale=7.0,
            generator=torch.Generator().manual_seed(0),
            output_type="np",
        )
        return np.asarray(out.images)

    raw = run(tiny_pipeline(kind))  # type: ignore[arg-type]
    off = SafePipeline(tiny_pipeline(kind), _policy(tmp_path, sld(0.0)))  # type: ignore[arg-type]
    np.testing.assert_array_equal(run(off), raw)
    on = SafePipeline(tiny_pipeline(kind), _policy(tmp_path, sld(1.0)))  # type: ignore[arg-type]
    steered = run(on)
    assert np.abs(steered - raw).max() > 1e-4
    assert on(
        "a nude person", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).decisions[0].steering_scales == ({"sld": 1.0},)


def test_sld_strength_follows_prompt_risk_and_the_ladder(tmp_path: Path) -> None:
    policy = Policy.from_dict(
        {
            "classifiers": [{"kind": "static", "sequence": [{"sexual": 0.9}, {"sexual": 0.0}]}],
            "categories": {"sexual": {"threshold": 0.5, "action": "regenerate"}},
            "prompt": {"classifiers": [{"kind": "static", "scores": {"sexual": 0.5}}]},
            "escalation": {"max_attempts": 2, "ladder": [1.0, 2.0]},
            "steering": {
                "guidance": {
                    "concepts": ["nude"],
                    "categories": ["sexual"],
                    "scale": 0.2,
                    "risk_boost": 1.0,
                }
            },
        }
    )
    safe = SafePipeline(tiny_pipeline(), policy)
    out = safe("a person", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert out.decisions[0].attempts == 2
    # attempt 1: 0.2 + 1.0 * prompt risk 0.5; attempt 2: the flagged image's 0.9 is the
    # risk now, (0.2 + 0.9) * 2 = 2.2, capped at max_scale 2.0
    assert out.decisions[0].steering_scales == (
        {"sld": pytest.approx(0.7)},
        {"sld": pytest.approx(2.0)},
    )


def test_a_rank_cap_that_breaks_the_tolerance_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    capped = CONFIG.model_copy(update={"rank": 1, "tolerance": 0.001})
    entry = {"closed_form": capped.model_dump(), "categories": ["sexual"]}
    with caplog.at_level("WARNING", logger="safety_lora.steering"):
        SafePipeline(tiny_pipeline(), _policy(tmp_path, {"adapters": [entry]}))
    (record,) = [r for r in caplog.records if "tolerance" in r.getMessage()]
    assert "rank 1 holds the edit only to a relative error of" in record.getMessage()
    assert solved_adapter(tiny_pipeline(), capped).svd_error > 0.001
