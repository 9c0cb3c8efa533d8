"""No image passes by a side door: every frame is judged, every Pillow mode converted right."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from safety_lora.cli import app
from safety_lora.guard import SafetyGuard
from safety_lora.image_codec import decode_image
from safety_lora.imaging import to_rgb, views
from safety_lora.policies import Policy, PolicyEngine
from safety_lora.taxonomy import Action

GREY = (128, 128, 128)


def disc(colour: tuple[int, int, int]) -> Image.Image:
    """A concept-world-like image: one disc on grey (red is what the policy blocks)."""
    image = Image.new("RGB", (32, 32), GREY)
    ImageDraw.Draw(image).ellipse((8, 8, 24, 24), fill=colour)
    return image


RED, BLUE, GREEN = disc((215, 35, 35)), disc((40, 70, 220)), disc((40, 180, 50))


def policy(**extra: Any) -> Policy:
    return Policy.from_dict(
        {
            "classifiers": [{"kind": "concept_world", "unsafe": {"sexual": ["red"]}}],
            "categories": {"sexual": {"threshold": 0.5, "action": "block"}},
            **extra,
        }
    )


def animated(fmt: str, frames: list[Image.Image]) -> bytes:
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "WEBP"])
def test_an_unsafe_second_frame_decides_the_image(fmt: str) -> None:
    data = animated(fmt, [BLUE, RED, BLUE])
    image = decode_image(data).image
    assert getattr(image, "n_frames", 1) == 3
    (decision,) = PolicyEngine(policy()).judge([image])
    assert decision.action is Action.BLOCK and decision.frame == 1
    assert "worst: frame 2 of 3" in decision.reasons[-1]
    (safe,) = PolicyEngine(policy()).judge([decode_image(animated(fmt, [BLUE, GREEN])).image])
    assert safe.action is Action.ALLOW


def test_multi_frame_images_can_be_refused_and_are_capped() -> None:
    gif = decode_image(animated("GIF", [BLUE, GREEN])).image  # equal frames would merge
    (refused,) = PolicyEngine(policy(multi_frame="refuse")).judge([gif])
    assert (refused.action, refused.rule) == (Action.BLOCK, "multi_frame")
    (capped,) = PolicyEngine(policy(max_frames=2)).judge(
        [decode_image(animated("GIF", [BLUE, GREEN, BLUE])).image]
    )
    assert (capped.action, capped.rule) == (Action.BLOCK, "max_frames")
    assert "3 frames, over the policy's max_frames 2" in capped.reasons[0]
    (still,) = PolicyEngine(policy(multi_frame="refuse")).judge([BLUE])
    assert still.action is Action.ALLOW  # a still image is not multi-frame


def test_content_hidden_under_transparency_is_judged() -> None:
    hidden = RED.convert("RGBA")
    alpha = np.asarray(hidden).copy()
    alpha[..., 3] = 0  # fully transparent: a viewer sees white, the pixels hold a red disc
    image = Image.fromarray(alpha, "RGBA")
    labels = [v.label for v in views(image)]
    assert labels == ["the image", "the image, transparency ignored"]
    (decision,) = PolicyEngine(policy()).judge([image])
    assert decision.action is Action.BLOCK
    assert "transparency ignored" in decision.reasons[-1]
    palette = RED.convert("P")
    palette.info["transparency"] = palette.getpixel((16, 16))  # the disc's own index
    (p_decision,) = PolicyEngine(policy()).judge([palette])
    assert p_decision.action is Action.BLOCK


def _grey16_png(grey: Image.Image) -> bytes:
    wide = (np.asarray(grey).astype("<u2") * 257).tobytes()
    buffer = io.BytesIO()
    Image.frombytes("I;16", grey.size, wide).save(buffer, format="PNG")
    return buffer.getvalue()


GREY_MODES = {
    "16-bit PNG": lambda g: decode_image(_grey16_png(g)).image,
    "I;16": lambda g: Image.frombytes(
        "I;16", g.size, (np.asarray(g).astype("<u2") * 257).tobytes()
    ),
    "I (16-bit values)": lambda g: Image.fromarray(np.asarray(g).astype(np.int32) * 257),
    "I (8-bit values)": lambda g: Image.fromarray(np.asarray(g).astype(np.int32)),
    "F (0..1)": lambda g: Image.fromarray(np.asarray(g).astype(np.float32) / 255.0),
    "F (0..255)": lambda g: Image.fromarray(np.asarray(g).astype(np.float32)),
    "LA": lambda g: g.convert("LA"),
}


@pytest.mark.parametrize("mode", list(GREY_MODES))
def test_greyscale_modes_are_seen_as_their_8bit_image(mode: str) -> None:
    grey = Image.fromarray((np.random.default_rng(0).random((24, 24)) * 255).astype(np.uint8))
    shown, stored = to_rgb(GREY_MODES[mode](grey))
    assert stored is None
    diff = np.abs(np.asarray(shown, int) - np.asarray(grey.convert("RGB"), int))
    assert diff.max() <= 1, mode  # not pure white, not clipped: the same image


COLOUR_MODES = {
    "CMYK": lambda im: im.convert("CMYK"),
    "P": lambda im: im.convert("P"),
    "RGBA opaque": lambda im: im.convert("RGBA"),
    "P with transparency elsewhere": lambda im: _transparent_corner(im.convert("P")),
    "JPEG": lambda im: Image.open(io.BytesIO(_encoded(im, "JPEG"))),
}


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _transparent_corner(image: Image.Image) -> Image.Image:
    image.info["transparency"] = image.getpixel((0, 0))
    return image


@pytest.mark.parametrize("mode", list(COLOUR_MODES))
def test_colour_modes_keep_the_unsafe_content(mode: str) -> None:
    (red,) = PolicyEngine(policy()).judge([COLOUR_MODES[mode](RED)])
    (blue,) = PolicyEngine(policy()).judge([COLOUR_MODES[mode](BLUE)])
    assert red.action is Action.BLOCK, mode
    assert blue.action is Action.ALLOW, mode


def test_the_classifier_is_fed_the_right_pixels_of_a_16bit_png() -> None:
    seen: list[Image.Image] = []

    class Recorder:
        name, fingerprint = "recorder", "recorder:0"

        def classify(self, images: list[Image.Image]) -> list[Any]:
            from safety_lora.classifiers.base import ImageScores

            seen.extend(images)
            return [ImageScores(scores={}) for _ in images]

    engine = PolicyEngine(policy())
    engine.image_classifiers = [Recorder()]
    grey = Image.new("L", (16, 16), 40)  # dark grey; Pillow's own RGB conversion gives white
    engine.judge([decode_image(_grey16_png(grey)).image])
    (fed,) = seen
    assert fed.mode == "RGB" and fed.getpixel((3, 3)) == (40, 40, 40)


def test_every_entry_point_judges_later_frames(tmp_path: Path) -> None:
    gif = animated("GIF", [BLUE, RED])
    guard = SafetyGuard(policy())
    result = guard.moderate([decode_image(gif).image])
    assert result.decisions[0].action is Action.BLOCK
    assert result.images[0].info.get("safety_lora")  # a placeholder, not the animation
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "animated.gif").write_bytes(gif)
    policy_file = tmp_path / "p.json"
    policy_file.write_text(json.dumps(policy().model_dump(mode="json")))
    out = CliRunner().invoke(app, ["moderate", str(folder), "--policy", str(policy_file), "--json"])
    assert out.exit_code == 1
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert (row["action"], row["frame"]) == ("block", 1)
