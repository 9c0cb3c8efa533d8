"""Policy validation matrix: good files load, bad ones fail naming file, path and value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safety_lora.policies import Policy, PolicyError
from safety_lora.policies.schema import PRESETS, AdapterIntegrityError
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
    assert strict.prompt.rule(Category.SEXUAL).refuse_at == 0.8
    assert balanced.prompt.rule(Category.SEXUAL).refuse_at is None
    assert balanced.categories[Category.SEXUAL].action is Action.REGENERATE
    assert balanced.escalation.max_attempts == 3
    assert permissive.categories[Category.SEXUAL].action is Action.ALLOW


def test_minimal_policy_gets_defaults(tmp_path: Path) -> None:
    policy = Policy.from_file(write(tmp_path, "version: 1\n"))
    assert policy.categories[Category.MINORS].threshold == 0.5
    assert [c.kind for c in policy.prompt.classifiers] == ["prompt_rules"]
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
    text = (
        "version: 1\naudit: {path: logs/audit.jsonl}\n"
        "steering:\n  adapters:\n    - {path: adapters/erase.safetensors, categories: [sexual]}\n"
    )
    policy = Policy.from_file(write(tmp_path, text))
    assert policy.audit.path == (tmp_path / "logs/audit.jsonl").resolve()
    adapter = policy.steering.adapters[0]
    assert adapter.path == (tmp_path / "adapters/erase.safetensors").resolve()
    assert adapter.adapter_name == "erase"


def test_adapter_sha256_pin(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"weights")
    good = "a8b3d1d4c1a1e1b1c6a4c5ae9cbc3d1b6b6f0e4c3b8e6a8e1e0b1b8b7f3b1d2e"
    text = (
        "version: 1\nsteering:\n  adapters:\n"
        f"    - {{path: a.safetensors, categories: [sexual], sha256: {good}}}\n"
    )
    adapter = Policy.from_file(write(tmp_path, text)).steering.adapters[0]
    with pytest.raises(AdapterIntegrityError, match="the policy pins a8b3"):
        adapter.verified_sha256()
    unpinned = adapter.model_copy(update={"sha256": None})
    import hashlib

    assert unpinned.verified_sha256() == hashlib.sha256(b"weights").hexdigest()


def test_json_schema_is_exported() -> None:
    schema = Policy.model_json_schema()
    assert schema["additionalProperties"] is False
    assert "classifiers" in schema["properties"]
    text = json.dumps(schema)
    for kind in ("nudenet", "clip_concepts", "hf_image", "static", "prompt_rules", "concept_world"):
        assert f'"{kind}"' in text
