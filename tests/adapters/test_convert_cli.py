"""``convert`` (exact / refused / SVD-approximate) and the ``inspect``/``convert`` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from _adapter_fixtures import base_unet, lycoris_file, unet_out
from typer.testing import CliRunner

from safety_lora.adapters import AdapterFormatError, convert, load_adapter, read_adapter
from safety_lora.cli import app
from safety_lora.cli.adapters import register

runner = CliRunner(env={"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"})

ROWS: list[tuple[str, dict[str, Any]]] = [
    ("loha", {"algo": "loha"}),
    ("lokr", {"algo": "lokr"}),
    ("full", {"algo": "full"}),
]


@pytest.fixture(autouse=True)
def _commands() -> None:
    if not any(c.name == "inspect" for c in app.registered_commands):
        register(app)


@pytest.mark.parametrize(("row", "kwargs"), ROWS, ids=[r for r, _ in ROWS])
def test_factorised_to_lora_needs_approximate(
    tmp_path: Path, row: str, kwargs: dict[str, Any]
) -> None:
    src, lyco_unet, _ = lycoris_file(tmp_path / f"{row}.safetensors", kwargs)
    unet = base_unet()
    with pytest.raises(AdapterFormatError, match=f"a {row} adapter cannot be written exactly"):
        convert(src, tmp_path / "x.safetensors", to="kohya", unet=unet)
    low = convert(
        src, tmp_path / "low.safetensors", to="kohya", approximate=True, rank=1, unet=unet
    )
    high = convert(
        src, tmp_path / "high.safetensors", to="kohya", approximate=True, rank=512, unet=unet
    )
    assert not low.exact and low.target_family == "lora"
    assert set(low.module_errors) == set(high.module_errors) and len(low.module_errors) > 10
    assert 0.0 < low.overall_error < 1.0
    assert high.overall_error < 1e-5 or row == "full"  # full drops its diff_b bias deltas
    if row != "full":  # at full rank the SVD is the delta: outputs match LyCORIS'
        approx = base_unet()
        load_adapter(approx, tmp_path / "high.safetensors", adapter_name="a")
        assert (unet_out(approx) - unet_out(lyco_unet)).abs().max() <= 1e-4


def test_cli_inspect_json_and_table(tmp_path: Path) -> None:
    src, _, net = lycoris_file(tmp_path / "loha.safetensors", {"algo": "loha"})
    result = runner.invoke(app, ["inspect", str(src), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["format"], info["family"]) == ("lycoris", "loha")
    assert info["rank"] == {"4": len(net.loras)} and info["alpha"] == {"2.0": len(net.loras)}
    assert info["parameters"] == sum(p.numel() for p in net.parameters())
    assert info["base_model"] == {"ss_sd_model_hash": "tiny-sd"}
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k" in info["targets"]
    table = runner.invoke(app, ["inspect", str(src)])
    assert table.exit_code == 0, table.output
    assert "loha" in table.output and "ss_sd_model_hash=tiny-sd" in table.output


def test_cli_convert(tmp_path: Path) -> None:
    src, _, _ = lycoris_file(tmp_path / "loha.safetensors", {"algo": "loha"})
    refused = runner.invoke(
        app, ["convert", str(src), str(tmp_path / "k.safetensors"), "--to", "kohya"]
    )
    assert refused.exit_code == 1 and "--approximate" in refused.output
    args = [
        "convert",
        str(src),
        str(tmp_path / "k.safetensors"),
        "--to",
        "kohya",
        "--approximate",
        "--rank",
        "2",
    ]
    # The tiny UNet's convs are not SD-sized: without its config the conv shapes are unknown.
    no_base = runner.invoke(app, args)
    assert no_base.exit_code == 1 and "pass the base UNet (CLI: --base)" in no_base.output
    base_unet().save_config(tmp_path / "unet")
    ok = runner.invoke(app, [*args, "--base", str(tmp_path / "unet")])
    assert ok.exit_code == 0, ok.output
    assert "approximate, relative error" in ok.output
    state, fmt = read_adapter(tmp_path / "k.safetensors", unet=base_unet())
    assert (fmt, state.family) == ("kohya", "lora")
    assert {state.rank(p) for p in state.modules} <= {1, 2}
    bad = runner.invoke(app, ["convert", str(src), str(tmp_path / "k.safetensors"), "--to", "x"])
    assert bad.exit_code == 2 and "--to must be kohya, peft or lycoris" in bad.output


def test_public_surface() -> None:
    import safety_lora.adapters as adapters

    assert sorted(adapters.__all__) == sorted(
        ["FAMILIES", "FORMATS", "AdapterFormat", "AdapterFormatError", "AdapterInfo",
             "AdapterIntegrityError",
         "AdapterState", "ConversionReport", "Family", "FormatName", "ModuleIndex",
         "ModuleWeights", "check_fits", "convert", "detect_format", "load_adapter", "load_state",
         "read_adapter", "write_adapter"]
    )  # fmt: skip
    assert all(hasattr(adapters, name) for name in adapters.__all__)
