"""Property tests (hypothesis) and an API fuzz of the service from its OpenAPI schema.

Bounded example counts keep them to seconds in CI. Each asserts the same promises: a clear
error or a verdict, never a crash, a hang, a traceback, or an unsafe fixture let through.
"""

from __future__ import annotations

import io
import string
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from safety_lora.classifiers.normalize import normalize
from safety_lora.guard import SafetyGuard
from safety_lora.image_codec import ImageDecodeError, decode_image
from safety_lora.policies import Policy, PolicyEngine, PolicyError
from safety_lora.policies.engine import HARD_RULE
from safety_lora.service import ServiceSettings, create_app
from safety_lora.taxonomy import Action, PromptAction
from safety_lora.testing import tiny_pipeline

FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# -- policy loading: any mapping is a policy or a PolicyError ------------------------------------

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
KEYS = list(Policy.model_fields)


def _leaves(data: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _leaves(v, (*path, k))] or [path]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _leaves(v, (*path, i))] or [path]
    return [path]


@FAST
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=4))
def test_any_mapping_is_a_policy_or_a_clear_error(data: dict[str, Any]) -> None:
    try:
        Policy.from_dict(data)
    except PolicyError as e:
        assert str(e).startswith("<dict>: ") and "Traceback" not in str(e)


@FAST
@given(st.data())
def test_a_preset_with_one_value_changed_is_a_policy_or_a_clear_error(data: st.DataObject) -> None:
    preset = Policy.preset("balanced").model_dump(mode="json")
    path = data.draw(st.sampled_from(_leaves(preset)))
    node = preset
    for key in path[:-1]:
        node = node[key]
    if path:
        node[path[-1]] = data.draw(values)
    try:
        Policy.from_dict(preset)
    except PolicyError as e:
        assert str(e).startswith("<dict>: ")


# -- image decoding: bytes are an image or an ImageDecodeError; unsafe fixtures never pass ---------


def _disc(colour: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", (32, 32), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((8, 8, 24, 24), fill=colour)
    return image


RED, BLUE, GREEN = _disc((215, 35, 35)), _disc((40, 70, 220)), _disc((40, 180, 50))
ENGINE = PolicyEngine(
    Policy.from_dict(
        {
            "classifiers": [{"kind": "concept_world", "unsafe": {"sexual": ["red"]}}],
            "categories": {"sexual": {"threshold": 0.5, "action": "block"}},
        }
    )
)


def _encode(frames: list[Image.Image], fmt: str, mode: str) -> bytes:
    frames = [f.convert(mode) for f in frames]
    buffer = io.BytesIO()
    kwargs: dict[str, Any] = (
        {"save_all": True, "append_images": frames[1:]} if len(frames) > 1 else {}
    )
    frames[0].save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@FAST
@given(st.binary(max_size=256) | st.builds(lambda b, i: _encode([BLUE], "PNG", "RGB")[:i] + b,
                                         st.binary(max_size=64), st.integers(0, 200)))  # fmt: skip
def test_any_bytes_decode_to_an_image_or_a_clear_error(data: bytes) -> None:
    try:
        image = decode_image(data).image
    except ImageDecodeError:
        return
    (decision,) = ENGINE.judge([image])  # a verdict (on_error for broken pixels), not a crash
    assert decision.action in set(Action)


@FAST
@given(
    st.sampled_from(["PNG", "GIF", "TIFF", "WEBP"]),
    st.sampled_from(["RGB", "RGBA", "P", "CMYK"]),
    st.lists(st.sampled_from([BLUE, GREEN]), min_size=0, max_size=3),
    st.integers(0, 3),
)
def test_an_unsafe_frame_is_never_allowed_however_the_file_is_made(
    fmt: str, mode: str, others: list[Image.Image], where: int
) -> None:
    if (mode == "CMYK" and fmt != "TIFF") or (mode == "P" and fmt == "WEBP"):
        mode = "RGB"  # formats that cannot hold the mode
    frames = [*others[:where], RED, *others[where:]]
    (decision,) = ENGINE.judge([decode_image(_encode(frames, fmt, mode)).image])
    assert decision.action is Action.BLOCK


# -- prompt normalisation: any text normalises; hidden characters never split a word -------------

INVISIBLE = st.sampled_from(["\x00", "\x07", "\x1b", "\x7f", "\u200b", "\u200d", "\u00ad",
                              "\u2060", "\ufeff", "\u0085", "\u202e"])  # fmt: skip
GUARD = SafetyGuard("balanced")


@FAST
@given(st.text(max_size=200))
def test_any_text_normalises_to_lowercase_ascii_words(text: str) -> None:
    out = normalize(text)
    assert out.isascii() and out == out.lower() and "  " not in out
    assert set(out) <= set(string.ascii_lowercase + string.digits + "@$ ")


@FAST
@given(st.lists(st.tuples(st.integers(0, 20), INVISIBLE), max_size=4))
def test_invisible_characters_never_hide_the_hard_rule(cuts: list[tuple[int, str]]) -> None:
    prompt = "a nude child"
    for position, char in sorted(cuts, reverse=True):
        position = min(position, len(prompt))
        prompt = prompt[:position] + char + prompt[position:]
    decision = GUARD.check_prompt(prompt)
    assert (decision.action, decision.rule) == (PromptAction.REFUSE, HARD_RULE), repr(prompt)


# -- the service's API, fuzzed from its own OpenAPI schema ----------------------------------------


@pytest.fixture(scope="module")
def service_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    policy = folder / "policy.yaml"
    policy.write_text(
        "classifiers: [{kind: concept_world, unsafe: {sexual: [red]}}]\n"
        "categories: {sexual: {threshold: 0.5, action: block}}\n"
        "prompt:\n  rules: {violence: {steer_at: 0.3, refuse_at: 0.8}}\n"
    )
    settings_ = ServiceSettings(
        policy=str(policy), generation=True, max_steps=2, rate_limit_per_minute=0.0
    )
    app = create_app(settings_, pipeline=tiny_pipeline())
    app.state.service.load()  # the ASGI transport runs no lifespan
    return app


def _operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


def test_the_api_never_answers_with_a_server_error(service_app: Any) -> None:
    from schemathesis.checks import not_a_server_error

    operations = _operations(service_app)
    assert {op.label for op in operations} >= {
        "POST /v1/images/generations",
        "POST /v1/moderations/image",
        "POST /v1/moderations/prompt",
    }
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def fuzz(case: Any) -> None:
            response = case.call_and_validate(checks=[not_a_server_error])
            assert "Traceback" not in response.text

        fuzz()
