"""Property tests (hypothesis) over files that hold several images (issue 41).

Generated containers (format, how many images, their sizes, which one is unsafe, a pixel
budget) are either refused with the clean error, exactly when their images hold more pixels
together than the budget, or judged on every image: the unsafe one always decides, and each
image's size counted from the headers is the size it decodes to. Damaged containers give a
clean error or a verdict, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from _containers import ENGINE, RED, SAFE, disc, icns, ico, psd, saved
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from safety_lora.classifiers.base import ImageScores
from safety_lora.image_codec import ImageDecodeError, decode_image
from safety_lora.imaging import frame_rgb, pages
from safety_lora.policies import PolicyEngine
from safety_lora.taxonomy import Action

FAST = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
#: Formats whose images all share one canvas size.
CANVAS = ("GIF", "PNG", "WEBP", "PSD")
#: The pixel sizes of the slots Pillow writes to an ICNS (each the main image, resized, unless
#: an extra image of that size is given).
ICNS_SLOTS = [1024, 512, 512, 256, 256, 128, 64, 32]
SIDES = [16, 24, 32, 48, 64]


@dataclass(frozen=True)
class Container:
    """A generated file and what it holds: each image's size, and which one is red."""

    fmt: str
    data: bytes
    sizes: Sequence[tuple[int, int]]
    red: int | None

    @property
    def pixels(self) -> int:
        return sum(w * h for w, h in self.sizes)


@st.composite
def containers(draw: st.DrawFn) -> Container:
    fmt = draw(st.sampled_from(["GIF", "PNG", "WEBP", "TIFF", "MPO", "ICO", "ICNS", "PSD"]))
    if fmt == "ICNS":  # eight slots; the red one (if any) replaces the 32 or 64 pixel slot
        side = draw(st.sampled_from([32, 64, None]))
        extra = [] if side is None else [disc(RED, (side, side))]
        sizes = [(s, s) for s in ICNS_SLOTS]
        red = None if side is None else ICNS_SLOTS.index(side)
        return Container(fmt, icns(disc(SAFE[0], (64, 64)), extra), sizes, red)
    n = draw(st.integers(1, 3 if fmt == "MPO" else 4))  # Pillow cannot read back its 4-picture MPO
    colours = draw(st.lists(st.sampled_from(SAFE), min_size=n, max_size=n, unique=True))
    red = draw(st.none() | st.integers(0, n - 1))
    if fmt == "ICO":  # one entry per size, each at most 256
        sides = draw(st.lists(st.sampled_from(SIDES), min_size=n, max_size=n, unique=True))
        sizes = [(s, s) for s in sorted(sides, reverse=True)]
    elif fmt in CANVAS:
        sizes = [draw(st.tuples(st.sampled_from(SIDES), st.sampled_from(SIDES)))] * n
    else:
        sizes = draw(st.lists(st.tuples(st.sampled_from(SIDES), st.sampled_from(SIDES)),
                              min_size=n, max_size=n))  # fmt: skip
    images = [
        disc(RED if i == red else c, size)
        for i, (c, size) in enumerate(zip(colours, sizes, strict=True))
    ]
    if fmt == "ICO":
        data = ico(images, bitmap=draw(st.booleans()))
    elif fmt == "PSD":
        data = psd(images[0], images[1:])
    else:
        data = saved(images, fmt, **({"duration": 100} if fmt in ("GIF", "PNG", "WEBP") else {}))
    if fmt == "PSD" and n == 1:
        sizes = sizes[:1]  # no layers: the composite alone
    return Container(fmt, data, sizes, red)


class Counting:
    """The concept-world classifier, counting the images it is given."""

    def __init__(self, engine: PolicyEngine) -> None:
        (self.inner,) = engine.image_classifiers
        self.name, self.fingerprint = self.inner.name, self.inner.fingerprint
        self.seen: list[tuple[int, int]] = []

    def classify(self, images: Sequence[Image.Image]) -> list[ImageScores]:
        self.seen.extend(im.size for im in images)
        return self.inner.classify(images)


@FAST
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes on odd metadata
@given(containers(), st.sampled_from([4096, 20_000, 100_000, 4096 * 4096]))
def test_every_image_is_judged_or_the_file_is_refused(file: Container, budget: int) -> None:
    try:
        image = decode_image(file.data, max_pixels=budget).image
    except ImageDecodeError as e:
        assert file.pixels > budget, f"{file.fmt} {file.sizes} refused: {e}"
        assert f"over the limit of {budget} pixels (max_image_pixels)" in str(e)
        return
    assert file.pixels <= budget, f"{file.fmt} {file.sizes}: {file.pixels} > {budget} passed"
    found = pages(image)
    assert [p.size for p in found] == list(file.sizes)
    engine = PolicyEngine(ENGINE.policy, prompt_classifiers=[])
    counting = Counting(ENGINE)
    engine.image_classifiers = [counting]
    (decision,) = engine.judge([image])
    assert sorted(set(counting.seen)) == sorted(set(file.sizes))  # every image, as sized
    if file.red is None:
        assert decision.action is Action.ALLOW, decision.reasons
    else:
        assert (decision.action, decision.frame) == (Action.BLOCK, found[file.red].index)
    for page in found:  # what the headers said is what decodes
        assert frame_rgb(image, page.index).size == page.size


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(containers()).data)
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@FAST
@pytest.mark.filterwarnings("ignore::UserWarning")
@given(damaged())
def test_a_damaged_container_is_a_clear_error_or_a_verdict(data: bytes) -> None:
    try:
        image = decode_image(data).image
    except ImageDecodeError as e:
        assert "Traceback" not in str(e)
        return
    (decision,) = ENGINE.judge([image])  # a verdict (on_error for what does not decode)
    assert decision.action in set(Action)
