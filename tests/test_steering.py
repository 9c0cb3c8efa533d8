"""Steering owns the safety adapters: explicit strengths, windows, fused mode, tamper-proofing."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from safety_lora.adapters import AdapterIntegrityError
from safety_lora.policies.schema import SteeringPolicy
from safety_lora.steering import Steering, SteeringError
from safety_lora.testing import tiny_lora_file, tiny_pipeline


@pytest.fixture
def pipe() -> Any:
    return tiny_pipeline()


@pytest.fixture
def lora(pipe: Any, tmp_path: Path) -> Path:
    return tiny_lora_file(pipe, tmp_path / "safe.safetensors")


def _config(lora: Path, **extra: Any) -> SteeringPolicy:
    adapter = {"path": lora, "categories": ["sexual"], "scale": 1.0, **extra.pop("adapter", {})}
    return SteeringPolicy.model_validate({"adapters": [adapter], **extra})


def _run(pipe: Any, **kwargs: Any) -> np.ndarray:
    gen = torch.Generator().manual_seed(0)
    out = pipe("a cat", num_inference_steps=4, generator=gen, output_type="np", **kwargs)
    return np.asarray(out.images)


def _steered(steering: Steering, pipe: Any, scale: float, **kwargs: Any) -> np.ndarray:
    with steering.apply({"safe": scale}, kwargs) as call:
        return _run(pipe, **call)


def test_strength_zero_equals_no_adapter_and_one_differs(pipe: Any, lora: Path) -> None:
    raw = _run(pipe)
    steering = Steering(pipe, _config(lora))
    np.testing.assert_array_equal(_steered(steering, pipe, 0.0), raw)
    assert np.abs(_steered(steering, pipe, 1.0) - raw).max() > 0.01


def test_close_restores_the_pipeline(pipe: Any, lora: Path) -> None:
    raw = _run(pipe)
    steering = Steering(pipe, _config(lora))
    steering.close()
    assert not getattr(pipe.unet, "peft_config", {})
    np.testing.assert_array_equal(_run(pipe), raw)


def test_fused_equals_unfused_and_close_unfuses(pipe: Any, lora: Path) -> None:
    raw, base_modules = _run(pipe), _module_types(pipe.unet)
    dynamic = Steering(tiny_pipeline(), _config(lora))
    expected = {s: _steered(dynamic, dynamic.pipe, s) for s in (1.0, 0.5)}
    fused = Steering(pipe, _config(lora, mode="fused"))
    # fused, the forward path is the base model's own modules: no peft wrapper left in it
    assert _module_types(pipe.unet) == base_modules
    np.testing.assert_allclose(_steered(fused, pipe, 1.0), expected[1.0], atol=1e-5)
    # Another strength runs unfused, then the base strength is fused back.
    np.testing.assert_allclose(_steered(fused, pipe, 0.5), expected[0.5], atol=1e-5)
    assert _module_types(pipe.unet) == base_modules
    np.testing.assert_allclose(_steered(fused, pipe, 1.0), expected[1.0], atol=1e-5)
    fused.close()
    np.testing.assert_allclose(_run(pipe), raw, atol=1e-5)


def _module_types(model: torch.nn.Module) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in model.named_modules()]


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_the_users_own_lora_stays_active_once_wrapped(
    pipe: Any, lora: Path, tmp_path: Path
) -> None:
    user = tiny_lora_file(pipe, tmp_path / "user.safetensors", seed=7, std=0.3)
    # fused mode runs the first two fused (base strength 1), the last unfused
    calls = [(1.0, {}), (1.0, {"cross_attention_kwargs": {"scale": 0.5}}), (0.0, {})]
    got = {}
    for mode in ("dynamic", "fused"):
        pipe = tiny_pipeline()
        pipe.load_lora_weights(str(user), adapter_name="user")
        user_only = _run(pipe)
        steering = Steering(pipe, _config(lora, mode=mode))
        got[mode] = [_steered(steering, pipe, s, **kwargs) for s, kwargs in calls]
        np.testing.assert_allclose(got[mode][2], user_only, atol=1e-5)
        assert np.abs(got[mode][0] - user_only).max() > 0.01
        assert np.abs(got[mode][1] - got[mode][0]).max() > 0.01  # the user's scale acts...
    for fused, dynamic in zip(got["fused"], got["dynamic"], strict=True):
        np.testing.assert_allclose(fused, dynamic, atol=1e-5)  # ...on their adapter only


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_a_user_lora_loaded_onto_a_fused_pipeline_adds_to_the_safety_one(
    pipe: Any, lora: Path, tmp_path: Path
) -> None:
    user = tiny_lora_file(pipe, tmp_path / "user.safetensors", seed=7, std=0.3)
    reference = tiny_pipeline()
    reference.load_lora_weights(str(user), adapter_name="user")
    user_only = _run(reference)
    dynamic = Steering(reference, _config(lora))
    expected = {s: _steered(dynamic, reference, s) for s in (1.0, 0.5)}
    fused = Steering(pipe, _config(lora, mode="fused"))
    # the user's LoRA lands on the very layers the safety one is fused into
    pipe.load_lora_weights(str(user), adapter_name="user")
    np.testing.assert_allclose(_steered(fused, pipe, 1.0), expected[1.0], atol=1e-5)
    np.testing.assert_allclose(_steered(fused, pipe, 0.5), expected[0.5], atol=1e-5)
    np.testing.assert_allclose(_steered(fused, pipe, 1.0), expected[1.0], atol=1e-5)
    fused.close()
    np.testing.assert_allclose(_run(pipe), user_only, atol=1e-5)


def test_fused_mode_rejects_a_window(pipe: Any, lora: Path) -> None:
    with pytest.raises(ValueError, match="window"):
        Steering(pipe, _config(lora, mode="fused", window=(0.0, 0.5)))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p.disable_lora(),
        lambda p: p.set_adapters(["safe"], [0.0]),
        lambda p: p.fuse_lora(lora_scale=0.3),
        lambda p: (p.fuse_lora(), p.unfuse_lora()),
    ],
    ids=["disable_lora", "set_adapters", "fuse_lora", "fuse_unfuse"],
)
@pytest.mark.parametrize("mode", ["dynamic", "fused"])
def test_user_tampering_between_calls_does_not_remove_safety(
    pipe: Any, lora: Path, tamper: Any, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    steering = Steering(pipe, _config(lora, mode=mode))
    expected = _steered(steering, pipe, 1.0)
    tamper(pipe)
    with caplog.at_level(logging.WARNING, logger="safety_lora.steering"):
        np.testing.assert_allclose(_steered(steering, pipe, 1.0), expected, atol=1e-5)


def test_removed_adapter_is_a_clear_error(pipe: Any, lora: Path) -> None:
    steering = Steering(pipe, _config(lora))
    pipe.delete_adapters(["safe"])
    with pytest.raises(SteeringError, match=r"\['safe'\] were removed"):
        _steered(steering, pipe, 1.0)


def test_pinned_sha256_is_checked(pipe: Any, lora: Path) -> None:
    actual = hashlib.sha256(lora.read_bytes()).hexdigest()
    Steering(pipe, _config(lora, adapter={"sha256": actual})).close()
    with pytest.raises(AdapterIntegrityError, match=f"{lora}.*sha256 is {actual}.*pin is 0000"):
        Steering(pipe, _config(lora, adapter={"sha256": "0" * 64}))


def test_scales_are_restored_after_each_call(pipe: Any, lora: Path) -> None:
    steering = Steering(pipe, _config(lora, adapter={"scale": 0.25}))
    layer = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_k
    _steered(steering, pipe, 2.0)
    assert layer.scaling["safe"] == pytest.approx(0.25)


def test_user_lora_scale_does_not_rescale_safety(pipe: Any, lora: Path) -> None:
    steering = Steering(pipe, _config(lora))
    expected = _steered(steering, pipe, 1.0)
    scaled = _steered(steering, pipe, 1.0, cross_attention_kwargs={"scale": 0.5})
    np.testing.assert_allclose(scaled, expected, atol=1e-6)
    with pytest.raises(ValueError, match="scale"):
        _steered(steering, pipe, 1.0, cross_attention_kwargs={"scale": 0.0})


def test_window_steers_only_part_of_the_steps_and_chains_user_callback(
    pipe: Any, lora: Path
) -> None:
    full = _steered(Steering(pipe, _config(lora, window=(0.0, 1.0))), pipe, 1.0)
    pipe.unet.delete_adapters(["safe"])
    raw = _run(pipe)
    steering = Steering(pipe, _config(lora, window=(0.0, 0.5)))
    seen: list[int] = []

    def user(p: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        seen.append(step)
        return tensors

    half = _steered(steering, pipe, 1.0, callback_on_step_end=user)
    assert seen == [0, 1, 2, 3]
    assert np.abs(half - full).max() > 1e-3 and np.abs(half - raw).max() > 1e-3
    # The same steps steered by hand: strength 1 for steps 0-1, 0 for steps 2-3.
    steering.close()
    pipe.load_lora_weights(str(lora), adapter_name="safe")
    layers = [m for m in pipe.unet.modules() if "safe" in getattr(m, "scaling", {})]

    def by_hand(p: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        for layer in layers:
            layer.set_scale("safe", 1.0 if step + 1 < 2 else 0.0)
        return tensors

    np.testing.assert_array_equal(_run(pipe, callback_on_step_end=by_hand), half)


def test_window_honours_the_user_callbacks_returned_latents(pipe: Any, lora: Path) -> None:
    steering = Steering(pipe, _config(lora, window=(0.5, 1.0)))

    def zero_latents(p: Any, step: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        return {"latents": torch.zeros_like(tensors["latents"])} if step == 3 else tensors

    zeroed = _steered(steering, pipe, 1.0, callback_on_step_end=zero_latents)
    assert np.abs(zeroed - _steered(steering, pipe, 1.0)).max() > 1e-3
    steering.close()
    # Zero final latents decode to the same image whatever the steering was.
    np.testing.assert_array_equal(_run(pipe, callback_on_step_end=zero_latents), zeroed)


def test_threads_with_different_strengths_match_sequential_calls(pipe: Any, lora: Path) -> None:
    steering = Steering(pipe, _config(lora))
    strengths = [0.0, 1.5, 0.5, 1.0]
    expected = [_steered(steering, pipe, s) for s in strengths]
    results: dict[int, np.ndarray] = {}

    def worker(i: int) -> None:
        results[i] = _steered(steering, pipe, strengths[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(strengths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, e in enumerate(expected):
        np.testing.assert_array_equal(results[i], e)
