"""Policy validation matrix: good files load, bad ones fail naming file, path and value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safety_lora.policies import Policy, PolicyError
from safety_lora.policies.schema import PRESETS, ClosedFormSpec, SLDGuidance
from safety_lora.taxonomy import Action, Category


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_are_frozen(name: str) -> None:
    policy = Policy.preset(name)
    assert policy.name == name
    assert policy.on_error is Action.BLOCK
    with pytest.raises(Exception, match="frozen"):
        policy.name = "changed"  # type: ignore[misc]


def test_presets_differ_as_documented() -> None:
    strict, balanced, permissive = (Policy.preset(n) for n in PRESETS)
    assert strict.prompt.rule(Category.SEXUAL).refuse_at == 0.95
    assert balanced.prompt.rule(Category.SEXUAL).refuse_at is None
    assert balanced.categories[Category.SEXUAL].action is Action.REGENERATE
    assert balanced.escalation.max_attempts == 3
    assert permissive.categories[Category.SEXUAL].action is Action.ALLOW


MINIMAL = "version: 1\nclassifiers:\n  - {kind: static, scores: {sexual: 0.0}}\n"


def test_minimal_policy_gets_defaults(tmp_path: Path) -> None:
    policy = Policy.from_file(write(tmp_path, MINIMAL))
    assert policy.categories[Category.MINORS].threshold == 0.5
    assert [c.kind for c in policy.prompt.classifiers] == ["learned"]
    assert policy.escalation.multiplier(1) == 1.0
    assert policy.escalation.multiplier(7) == 2.0  # last rung repeats


def test_json_policy(tmp_path: Path) -> None:
    data = {
        "version": 1,
        "name": "j",
        "classifiers": [{"kind": "static", "scores": {"sexual": 0.2}}],
    }
    policy = Policy.from_file(write(tmp_path, json.dumps(data), "p.json"))
    assert policy.name == "j"
    assert policy.classifiers[0].kind == "static"


BAD = [
    (
        "version: 1\nclassifiers:\n  - kind: static\n    treshold: 0.5\n",
        "classifiers.0.treshold: unknown key",
    ),
    ("version: 2\n", "version: Input should be 1 (got 2)"),
    ("version: 1\nbogus: 1\n", "bogus: unknown key"),
    ("version: 1\nclassifiers:\n  - kind: nope\n", "classifiers.0: "),
    ("version: 1\ncategories:\n  sexual: {threshold: 1.5}\n", "categories.sexual.threshold"),
    ("version: 1\ncategories:\n  gore: {threshold: 0.5}\n", "categories.gore"),
    ("version: 1\ncategories:\n  sexual: {action: explode}\n", "'explode'"),
    ("version: 1\non_error: allow\n", "on_error: on_error must fail closed"),
    ("version: 1\nescalation: {final_action: regenerate}\n", "escalation.final_action"),
    ("version: 1\nescalation: {ladder: []}\n", "escalation.ladder"),
    ("version: 1\nsteering: {window: [0.6, 0.2]}\n", "steering.window"),
    (
        "version: 1\nsteering: {mode: fused, window: [0.0, 0.6]}\n",
        "steering: `window` must be [0.0, 1.0] in fused mode",
    ),
    (
        "version: 1\nsteering:\n  adapters:\n"
        "    - {closed_form: {erase: [red], attack_rounds: 2}, categories: [sexual]}\n",
        "start-up never runs attack rounds",
    ),
    (
        "version: 1\nsteering:\n  adapters:\n    - {path: a.safetensors}\n",
        "steering.adapters.0.categories",
    ),
    (
        "version: 1\nsteering:\n  adapters:\n"
        "    - {path: a.safetensors, categories: [sexual], sha256: xyz}\n",
        "steering.adapters.0.sha256",
    ),
    ("- 1\n- 2\n", "a policy must be a mapping"),
    ("version: [1\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_policies_name_file_path_and_value(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        Policy.from_file(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert expected in message


def test_minors_cannot_be_relaxed(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\ncategories:\n  minors: {threshold: 0.9, action: allow}\n")
    with pytest.raises(PolicyError, match="sexual content involving minors is always blocked"):
        Policy.from_file(path)


def test_missing_file_and_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.yaml: cannot read"):
        Policy.from_file(tmp_path / "nope.yaml")
    with pytest.raises(PolicyError, match="unknown preset 'lax'"):
        Policy.preset("lax")


def test_relative_paths_resolve_against_the_policy_folder(tmp_path: Path) -> None:
    text = MINIMAL + (
        "audit: {path: logs/audit.jsonl}\n"
        "steering:\n  adapters:\n    - {path: adapters/erase.safetensors, categories: [sexual]}\n"
    )
    policy = Policy.from_file(write(tmp_path, text))
    assert policy.audit.path == (tmp_path / "logs/audit.jsonl").resolve()
    adapter = policy.steering.adapters[0]
    assert adapter.path == (tmp_path / "adapters/erase.safetensors").resolve()
    assert adapter.adapter_name == "erase"


def test_json_schema_is_exported() -> None:
    schema = Policy.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "classifiers" in schema["properties"]
    text = json.dumps(schema)
    for kind in ("nudenet", "clip_concepts", "hf_image", "static", "prompt_rules", "concept_world"):
        assert f'"{kind}"' in text


# -- steering that works on any model, and no silent categories ------------------------------


@pytest.mark.parametrize("name", ["strict", "balanced"])
def test_strict_and_balanced_steer_every_category_they_act_on(name: str) -> None:
    policy = Policy.preset(name)
    entries = [a for a in policy.steering.adapters if isinstance(a, ClosedFormSpec)]
    assert len(entries) == len(policy.steering.adapters) == 3
    steered = {c for a in entries for c in a.categories}
    acted_on = {c for c, r in policy.categories.items() if r.action is not Action.ALLOW}
    assert acted_on <= steered | {Category.ILLEGAL_ACTIVITY}
    assert "nudity" in entries[0].closed_form.erase
    assert all(a.scale > 0 for a in entries)  # every request is steered, not only risky ones


@pytest.mark.parametrize("name", PRESETS)
def test_presets_say_what_they_do_not_judge(name: str) -> None:
    policy = Policy.preset(name)
    unjudged = set(policy.unjudged_images())
    assert Category.SEXUAL not in unjudged  # NudeNet judges it
    assert {Category.VIOLENCE, Category.MINORS} <= unjudged
    assert set(policy.unjudged) <= unjudged


UNJUDGED = [
    (
        "version: 1\nclassifiers: [{kind: nudenet}]\n"
        "categories:\n  violence: {threshold: 0.5, action: block}\n",
        "categories.violence: action block, but no image classifier here scores violence "
        "(nudenet: [sexual]); kinds that can: clip_concepts",
    ),
    (
        "version: 1\nclassifiers: []\n",
        "classifiers: a policy needs at least one image classifier",
    ),
    ("version: 1\n", "classifiers: a policy needs at least one image classifier"),
    (
        MINIMAL + "prompt: {classifiers: []}\n",
        "prompt.classifiers: a policy needs at least one prompt classifier",
    ),
    (
        "version: 1\nclassifiers: [{kind: static, scores: {}}]\n",
        "classifiers.0: a static classifier needs `scores`",
    ),
    (
        MINIMAL + "prompt:\n  classifiers: [{kind: static, scores: {sexual: 0.1}}]\n"
        "  rules: {violence: {steer_at: 0.3}}\n",
        "prompt.rules.violence: no prompt classifier here scores violence (static: [sexual])",
    ),
    (
        MINIMAL + "unjudged: [sexual]\n",
        "unjudged: sexual is scored on images and on prompts here; remove it",
    ),
]


@pytest.mark.parametrize(("text", "expected"), UNJUDGED)
def test_a_policy_that_judges_nothing_or_leaves_a_category_unjudged_is_refused(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        Policy.from_file(path)
    assert f"{path}: {expected}" in str(info.value)


def test_listing_a_category_as_unjudged_is_explicit_and_allowed(tmp_path: Path) -> None:
    text = (
        "version: 1\nclassifiers: [{kind: nudenet}]\nunjudged: [violence]\n"
        "categories:\n  violence: {threshold: 0.5, action: block}\n"
    )
    policy = Policy.from_file(write(tmp_path, text))
    assert policy.unjudged == [Category.VIOLENCE]
    assert Category.VIOLENCE in policy.unjudged_images()


def test_closed_form_and_sld_entries(tmp_path: Path) -> None:
    text = MINIMAL + (
        "steering:\n"
        "  adapters:\n"
        "    - closed_form: {erase: [nudity, naked], preserve: [a person], push: 1.0}\n"
        "      categories: [sexual]\n"
        "      risk_boost: 1.0\n"
        "    - {path: a.safetensors, categories: [sexual]}\n"
        "  guidance: {kind: sld, preset: strong, concepts: [nudity, violence],"
        " categories: [sexual], scale: 0.0, risk_boost: 1.0}\n"
    )
    steering = Policy.from_file(write(tmp_path, text)).steering
    solved, _file = steering.adapters
    assert isinstance(solved, ClosedFormSpec)
    assert solved.adapter_name == "closed_form_nudity"
    assert solved.closed_form.pairs() == [("nudity", ""), ("naked", "")]
    assert isinstance(steering.guidance, SLDGuidance)
    assert steering.guidance.concept == "nudity, violence"
    assert steering.names == ["closed_form_nudity", "a", "sld"]


BAD_STEERING = [
    (
        "steering:\n  adapters:\n    - closed_form: {erase: [red], push: -1}\n"
        "      categories: [sexual]\n",
        "steering.adapters.0.closed_form.push: Input should be greater than or equal to 0",
    ),
    (
        "steering:\n  adapters:\n    - closed_form: {erase: [red], templates: [a red]}\n"
        "      categories: [sexual]\n",
        "steering.adapters.0.closed_form.templates: each template needs",
    ),
    (
        "steering:\n  adapters:\n    - closed_form: {erase: [red], anchors: {blue: ''}}\n"
        "      categories: [sexual]\n",
        "anchors` names concepts not in `erase`: ['blue']",
    ),
    (
        "steering:\n  adapters:\n    - {closed_form: {erase: [red]}}\n",
        "steering.adapters.0.categories: Field required",
    ),
    (
        "steering:\n  guidance: {preset: huge, concepts: [red], categories: [sexual]}\n",
        "steering.guidance.preset: Input should be 'weak', 'medium', 'strong' or 'max'",
    ),
    (
        "steering:\n  adapters:\n    - {closed_form: {erase: [red]}, categories: [sexual],"
        " name: sld}\n  guidance: {concepts: [red], categories: [sexual]}\n",
        "steering: steering names must be unique, repeated: ['sld']",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_STEERING)
def test_bad_steering_entries_name_the_path(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL + text)
    with pytest.raises(PolicyError) as info:
        Policy.from_file(path)
    assert expected in str(info.value)
