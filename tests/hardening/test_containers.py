"""Every image in a file is judged, within one pixel budget for all of them (issue 41).

Icons (ICO, ICNS), layered (PSD), multi-picture (MPO), paged (TIFF) and animated files are
judged image by image through the engine, the service and ``moderate``; a file whose images
hold more pixels together than the budget is refused from its headers, before any decoding.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _containers import (
    ENGINE,
    RED,
    SAFE,
    disc,
    gif_with_wide_frame,
    icns,
    icns_two_in_one_slot,
    ico,
    psd,
    red_policy,
    saved,
    tiff_pages,
)
from PIL import Image, TiffImagePlugin
from typer.testing import CliRunner

from safety_lora.cli import app
from safety_lora.image_codec import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from safety_lora.imaging import pages
from safety_lora.policies import PolicyEngine
from safety_lora.service import BackgroundServer, ServiceSettings, create_app
from safety_lora.taxonomy import Action

#: An unsafe 16x16 entry beside safe 64x64 and 32x32 ones (Pillow shows the 64x64).
UNSAFE_ICON = [disc(SAFE[0], (64, 64)), disc(RED, (16, 16)), disc(SAFE[1], (32, 32))]


@functools.cache
def big_tiff() -> bytes:
    """The issue's file: a 64x64 page, then 16 pages of 6000x6000 (about 30 KB)."""
    return tiff_pages([(64, 64)] + [(6000, 6000)] * 16)


def judged(data: bytes, engine: PolicyEngine = ENGINE) -> Any:
    (decision,) = engine.judge([decode_image(data).image])
    return decision


@pytest.mark.parametrize("bitmap", [False, True], ids=["png entries", "bitmap entries"])
def test_an_unsafe_small_icon_entry_decides_the_icon(bitmap: bool) -> None:
    image = decode_image(ico(UNSAFE_ICON, bitmap=bitmap)).image
    assert image.size == (64, 64)  # what Pillow shows: the largest entry, safe
    assert [p.size for p in pages(image)] == [(64, 64), (32, 32), (16, 16)]
    (decision,) = ENGINE.judge([image])
    assert (decision.action, decision.frame) == (Action.BLOCK, 2)
    assert "worst: icon 16x16 (3 of 3)" in decision.reasons[-1]
    safe = ico([disc(SAFE[0], (64, 64)), disc(SAFE[1], (16, 16))], bitmap=bitmap)
    assert judged(safe).action is Action.ALLOW


def test_every_icns_resource_is_judged() -> None:
    decision = judged(icns(disc(SAFE[0], (64, 64)), [disc(RED, (32, 32))]))  # 16x16@2x
    assert decision.action is Action.BLOCK and "icon 32x32" in decision.reasons[-1]
    assert judged(icns(disc(SAFE[0], (64, 64)), [])).action is Action.ALLOW
    # one slot, two pictures: Pillow shows the PNG; the raw bitmap beside it is judged too
    red, blue = disc(RED, (16, 16)), disc(SAFE[0], (16, 16))
    assert judged(icns_two_in_one_slot(png=blue, raw=red)).action is Action.BLOCK
    assert judged(icns_two_in_one_slot(png=red, raw=blue)).action is Action.BLOCK
    assert judged(icns_two_in_one_slot(png=blue, raw=blue)).action is Action.ALLOW


@pytest.mark.parametrize(
    ("where", "label"), [(0, "the composite"), (1, "layer 1 of 2"), (2, "layer 2 of 2")]
)
def test_a_psd_composite_and_each_layer_are_judged(where: int, label: str) -> None:
    images = [disc(SAFE[0]), disc(SAFE[1]), disc(SAFE[2])]
    images[where] = disc(RED)
    image = decode_image(psd(images[0], images[1:])).image
    (decision,) = ENGINE.judge([image])
    assert (decision.action, decision.frame) == (Action.BLOCK, where)
    assert f"worst: {label}" in decision.reasons[-1]
    assert image.getpixel((16, 16)) == images[0].getpixel((16, 16))  # still the composite
    assert judged(psd(disc(SAFE[0]), [disc(SAFE[1])])).action is Action.ALLOW


@pytest.mark.parametrize("fmt", ["MPO", "TIFF"])
def test_later_pictures_of_other_sizes_are_judged(fmt: str) -> None:
    image = decode_image(saved([disc(SAFE[0]), disc(RED, (48, 40))], fmt)).image
    assert [p.size for p in pages(image)] == [(32, 32), (48, 40)]
    (decision,) = ENGINE.judge([image])
    assert (decision.action, decision.frame) == (Action.BLOCK, 1)
    assert image.tell() == 0  # left at its first picture, as given


@pytest.mark.parametrize(
    "data",
    [
        ico(UNSAFE_ICON[:1] + UNSAFE_ICON[2:]),
        icns(disc(SAFE[0], (64, 64)), []),
        psd(disc(SAFE[0]), [disc(SAFE[1])]),
        saved([disc(SAFE[0]), disc(SAFE[1])], "MPO"),
    ],
    ids=["ICO", "ICNS", "PSD", "MPO"],
)
def test_the_multi_image_rule_covers_every_container(data: bytes) -> None:
    refused = judged(data, PolicyEngine(red_policy(multi_frame="refuse")))
    assert (refused.action, refused.rule) == (Action.BLOCK, "multi_frame")
    assert judged(data).action is Action.ALLOW


def test_max_frames_counts_icon_entries() -> None:
    capped = judged(ico(UNSAFE_ICON), PolicyEngine(red_policy(max_frames=2)))
    assert (capped.action, capped.rule) == (Action.BLOCK, "max_frames")
    assert "3 frames, over the policy's max_frames 2" in capped.reasons[0]
    single = judged(ico([disc(SAFE[0], (32, 32))]), PolicyEngine(red_policy(multi_frame="refuse")))
    assert single.action is Action.ALLOW  # one icon entry is a still image


@pytest.fixture
def decoded_pages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every TIFF page Pillow prepares to decode (allocates pixels for)."""
    seen: list[tuple[int, int]] = []
    prepare = TiffImagePlugin.TiffImageFile.load_prepare

    def spy(self: TiffImagePlugin.TiffImageFile) -> None:
        seen.append(self.size)
        prepare(self)

    monkeypatch.setattr(TiffImagePlugin.TiffImageFile, "load_prepare", spy)
    return seen


def test_a_later_oversized_page_is_refused_before_any_decoding(
    decoded_pages: list[tuple[int, int]],
) -> None:
    data = big_tiff()
    assert len(data) < 100_000
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(data)
    message = str(refused.value)
    assert "holds 17 images" in message and "frame 2 of 17 (6000x6000) goes over it" in message
    assert f"over the limit of {DEFAULT_MAX_PIXELS} pixels (max_image_pixels)" in message
    assert decoded_pages == []  # sized from the headers: not one page decoded
    # An image given to the engine directly: its frames-times-pixels cap counts every page.
    (decision,) = ENGINE.judge([Image.open(io.BytesIO(data))])
    assert (decision.action, decision.rule) == (Action.BLOCK, "max_frames")
    assert "17 frames (64x64, 6000x6000, 6000x6000, 6000x6000, ...)" in decision.reasons[0]
    assert decoded_pages == []
    small = decode_image(tiff_pages([(64, 64), (600, 600)])).image  # within the budget
    assert [p.size for p in pages(small)] == [(64, 64), (600, 600)]


def test_a_gif_frame_reaching_past_the_screen_counts_at_its_size() -> None:
    data = gif_with_wide_frame(6000, 6000)
    assert Image.open(io.BytesIO(data)).size == (16, 16)  # the logical screen
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(data)
    found = re.search(r"frame 2 of 2 \((\d+)x(\d+)\) goes over it", str(refused.value))
    assert found is not None, refused.value
    assert min(int(found[1]), int(found[2])) >= 6000  # its own size, not the screen's 16x16


def test_a_later_page_over_pillows_bomb_limit_is_a_clear_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # pages over 2000 pixels are bombs
    data = tiff_pages([(16, 16), (64, 64)])
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(data, max_pixels=10**6)
    expected = "frame 2 of 2 is 64x64 = 4096 pixels, over the limit of 2000 pixels (decompression"
    assert expected in str(refused.value)
    (decision,) = ENGINE.judge([Image.open(io.BytesIO(data))])  # given directly: fails closed
    assert (decision.action, decision.rule) == (Action.BLOCK, "on_error")
    assert "DecompressionBombError" in decision.errors[0]


# -- the service: the image route and /v1/moderations ------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = tmp_path_factory.mktemp("containers")
    policy = folder / "policy.json"
    policy.write_text(json.dumps(red_policy().model_dump(mode="json")))
    settings = ServiceSettings(policy=str(policy), generation=False, rate_limit_per_minute=0.0)
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        yield http


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def test_the_service_judges_every_icon_entry(client: httpx.Client) -> None:
    icon = ico(UNSAFE_ICON)
    as_json = client.post("/v1/moderations/image", json={"input": data_url(icon, "image/x-icon")})
    as_file = client.post(
        "/v1/moderations/image", files=[("file", ("favicon.ico", icon, "image/x-icon"))]
    )
    openai = client.post(
        "/v1/moderations",
        json={"input": [{"type": "image_url", "image_url": {"url": data_url(icon, "image/x")}}]},
    )
    for response in (as_json, as_file):
        (result,) = response.json()["results"]
        assert (response.status_code, result["action"], result["flagged"]) == (200, "block", True)
    assert openai.status_code == 200 and openai.json()["results"][0]["flagged"] is True
    assert openai.json()["results"][0]["safety_lora"]["action"] == "block"


def test_the_service_refuses_an_over_budget_file_with_its_envelope(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiff = data_url(big_tiff(), "image/tiff")
    image_route = client.post("/v1/moderations/image", json={"input": [tiff]})
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": tiff}}]
    openai = client.post("/v1/moderations", json={"input": parts})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the server runs in this process
    bomb = client.post(
        "/v1/moderations/image",
        files=[("file", ("pages.tiff", tiff_pages([(16, 16), (64, 64)]), "image/tiff"))],
    )
    for response, where in (
        (image_route, "input[0]: "),
        (openai, "input[1].image_url.url: "),
        (bomb, "file[0] pages.tiff: "),
    ):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_image" and error["message"].startswith(where)
    assert "frame 2 of 17 (6000x6000)" in image_route.json()["error"]["message"]
    assert "(decompression bomb)" in bomb.json()["error"]["message"]


# -- the CLI: the same budget, configurable, and one bad file does not stop the run -------------


def test_moderate_reports_a_bad_file_and_judges_every_other(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    disc(RED).save(folder / "a.png")
    (folder / "b.tiff").write_bytes(big_tiff())
    (folder / "c.ico").write_bytes(ico(UNSAFE_ICON))
    (folder / "d.dat").write_bytes(ico(UNSAFE_ICON))  # an icon by content, not by name
    disc(SAFE[0]).save(folder / "e.png")
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps(red_policy().model_dump(mode="json")))
    out = CliRunner().invoke(app, ["moderate", str(folder), "-p", str(policy), "--json"])
    assert out.exit_code == 1, out.output
    rows = {Path(r["item"]).name: r for r in map(json.loads, out.stdout.splitlines())}
    assert {name: row["action"] for name, row in rows.items()} == {
        "a.png": "block",
        "b.tiff": "error",
        "c.ico": "block",
        "d.dat": "block",
        "e.png": "allow",
    }
    (reason,) = rows["b.tiff"]["reasons"]
    assert str(folder / "b.tiff") in reason and "frame 2 of 17 (6000x6000)" in reason
    assert f"over the limit of {DEFAULT_MAX_PIXELS} pixels (--max-image-pixels)" in reason


def test_moderate_pixel_budget_is_an_option(tmp_path: Path) -> None:
    image = tmp_path / "wide.png"
    disc(SAFE[0], (100, 100)).save(image)
    args = ["moderate", str(image), "--json", "--max-image-pixels"]
    small = CliRunner().invoke(app, [*args, "5000"])
    (row,) = [json.loads(line) for line in small.stdout.splitlines()]
    assert small.exit_code == 1 and row["action"] == "error"
    (reason,) = row["reasons"]
    assert "100x100 = 10000 pixels, over the limit of 5000 pixels (--max-image-pixels)" in reason
    enough = CliRunner().invoke(app, ["moderate", str(image), "--max-image-pixels", "10000"])
    assert enough.exit_code == 0, enough.output
    bad = CliRunner().invoke(app, ["moderate", str(image), "--max-image-pixels", "10"])
    assert bad.exit_code == 2 and "--max-image-pixels" in bad.output
