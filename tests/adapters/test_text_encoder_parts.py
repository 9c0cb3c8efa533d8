"""Files with text-encoder parts (``lora_te*``, ``text_encoder.``): loaded onto the pipeline's
text encoders like diffusers' ``load_lora_weights``, strength-scaled, or skipped by
``unet_only``, never dropped silently.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from _adapter_fixtures import kohya_lora_file, kohya_stems
from safetensors.torch import load_file
from typer.testing import CliRunner

from safety_lora.adapters import AdapterFormatError, convert, load_adapter, read_adapter
from safety_lora.cli import app
from safety_lora.pipeline import SafePipeline
from safety_lora.policies.schema import Policy
from safety_lora.testing import tiny_pipeline

ZERO: list[dict[str, Any]] = [{"kind": "static", "scores": {"sexual": 0.0}}]


def sdxl_file(pipe: Any, path: Path, *, text: bool = True) -> Path:
    """An sd-scripts-style SDXL file: LDM-named UNet part, ``lora_te1_``/``lora_te2_`` parts."""
    parts = {"lora_unet_": kohya_stems(pipe.unet, ldm=True)}
    if text:
        parts["lora_te1_"] = kohya_stems(pipe.text_encoder)
        parts["lora_te2_"] = kohya_stems(pipe.text_encoder_2)
    return kohya_lora_file(path, parts)


def run(pipe: Any) -> np.ndarray:
    out = pipe("a red cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")  # fmt: skip
    return np.asarray(out.images)


def policy(path: Path, scale: float = 1.0, **entry: Any) -> Policy:
    adapter = {"path": str(path), "categories": ["sexual"], "scale": scale, **entry}
    return Policy.model_validate({"classifiers": ZERO, "steering": {"adapters": [adapter]}})


def embeds(pipe: Any) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = pipe.encode_prompt(
            "a red cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )[0]
    return out


@pytest.fixture
def xl(tmp_path: Path) -> tuple[Path, Path]:
    pipe = tiny_pipeline("sdxl", real_blocks=True)
    return sdxl_file(pipe, tmp_path / "xl.safetensors"), sdxl_file(
        pipe, tmp_path / "xl-unet.safetensors", text=False
    )


def test_sdxl_file_with_text_parts_matches_diffusers_load_lora_weights(
    xl: tuple[Path, Path],
) -> None:
    path, _ = xl
    theirs = tiny_pipeline("sdxl", real_blocks=True)
    theirs.load_lora_weights(str(path), adapter_name="a")
    expected = run(theirs)
    base = run(tiny_pipeline("sdxl", real_blocks=True))
    safe = SafePipeline(tiny_pipeline("sdxl", real_blocks=True), policy(path))
    assert safe.steering.text_encoders == {"xl": ("text_encoder", "text_encoder_2")}
    got = run(safe)
    assert np.abs(got - base).max() > 1e-3
    np.testing.assert_allclose(got, expected, atol=1e-5)

    off = SafePipeline(tiny_pipeline("sdxl", real_blocks=True), policy(path, scale=0.0))
    np.testing.assert_array_equal(run(off), base)  # strength 0: text parts off too


def test_text_part_follows_the_strength_and_is_removed_on_close(xl: tuple[Path, Path]) -> None:
    path, _ = xl
    pipe = tiny_pipeline("sdxl", real_blocks=True)
    base = embeds(pipe)
    safe = SafePipeline(pipe, policy(path, scale=0.5))
    layers = safe.steering._text_layers
    assert layers and all(layer.scaling["xl"] == pytest.approx(0.5 * 1 / 2) for layer in layers)
    with safe.steering.apply({"xl": 0.0}, {}):
        assert torch.equal(embeds(pipe), base)
    with safe.steering.apply({"xl": 1.0}, {}):
        assert (embeds(pipe) - base).abs().max() > 1e-3
    safe.steering.close()
    assert torch.equal(embeds(pipe), base)
    assert not getattr(pipe.text_encoder, "peft_config", None)


def test_unet_only_skips_the_text_parts_and_records_it(xl: tuple[Path, Path]) -> None:
    path, unet_part = xl
    reference = run(SafePipeline(tiny_pipeline("sdxl", real_blocks=True), policy(unet_part)))
    pipe = tiny_pipeline("sdxl", real_blocks=True)
    safe = SafePipeline(pipe, policy(path, unet_only=True))
    assert safe.steering.skipped_text_encoders == {"xl": ("text_encoder", "text_encoder_2")}
    assert not getattr(pipe.text_encoder, "peft_config", None)
    np.testing.assert_array_equal(run(safe), reference)


def test_a_text_part_without_its_text_encoder_is_refused(xl: tuple[Path, Path]) -> None:
    path, _ = xl
    pipe = tiny_pipeline("sdxl", real_blocks=True)
    with pytest.raises(AdapterFormatError, match=r"text_encoder_2 \(\d+ modules\).*unet_only"):
        load_adapter(
            pipe.unet, path, adapter_name="a", text_encoders={"text_encoder": pipe.text_encoder}
        )
    assert not getattr(pipe.unet, "peft_config", None)  # nothing half-loaded


def test_sd_text_part_lora_te_and_peft_round_trip(tmp_path: Path) -> None:
    pipe = tiny_pipeline("sd")
    parts = {"lora_unet_": kohya_stems(pipe.unet), "lora_te_": kohya_stems(pipe.text_encoder)}
    src = kohya_lora_file(tmp_path / "sd.safetensors", parts)
    peft = tmp_path / "peft.safetensors"
    encoders = {"text_encoder": pipe.text_encoder}
    convert(src, peft, to="peft", unet=pipe.unet, text_encoders=encoders)
    assert any(k.startswith("text_encoder.") for k in load_file(peft))
    back = tmp_path / "back.safetensors"
    convert(peft, back, to="kohya", unet=pipe.unet)
    a, b = load_file(src), load_file(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    theirs = copy.deepcopy(pipe)
    theirs.load_lora_weights(str(peft), adapter_name="a")  # diffusers reads our peft export
    load_adapter(
        pipe.unet, peft, adapter_name="a", text_encoders={"text_encoder": pipe.text_encoder}
    )
    torch.testing.assert_close(embeds(pipe), embeds(theirs), atol=1e-5, rtol=0)


def test_inspect_lists_the_text_parts(xl: tuple[Path, Path]) -> None:
    path, _ = xl
    state, _ = read_adapter(path)  # no pipeline: the reference CLIP names
    assert sorted(state.text_encoders) == ["text_encoder", "text_encoder_2"]
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    text = json.loads(result.output)["text_encoders"]
    pipe = tiny_pipeline("sdxl", real_blocks=True)
    assert text["text_encoder_2"]["modules"] == len(kohya_stems(pipe.text_encoder_2))
    assert (
        text["text_encoder"]["parameters"] == state.text_encoders["text_encoder"].parameter_count()
    )
    table = CliRunner().invoke(app, ["inspect", str(path)], env={"COLUMNS": "240"})
    assert "text_encoder_2 (" in table.output
