"""Policy files are bounded (size, nesting, list lengths, alias expansion) and every term in
them means something: each limit refused with an error naming the file and the limit, values
in errors shown cut, blank terms refused naming the field and index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from safety_lora.cli import app
from safety_lora.closed_form.config import ClosedFormConfig
from safety_lora.policies import Policy, PolicyError
from safety_lora.policies.schema import MAX_PROBLEMS
from safety_lora.service import ServiceSettings
from safety_lora.textfiles import MAX_DEPTH, MAX_FILE_BYTES, MAX_ITEMS, MAX_NODES

BASE = "version: 1\nclassifiers: [{kind: static, scores: {sexual: 0.0}}]\n"
runner = CliRunner(env={"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"})


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def bomb(levels: int, fanout: int = 9) -> str:
    """YAML anchors ``l0``..``l{levels}``, each a list of ``fanout`` aliases of the one before:
    a few hundred bytes that expand to ``fanout ** levels`` strings (the "billion laughs")."""
    lines = [f"x0: &l0 [{', '.join(['lol'] * fanout)}]"]
    for i in range(1, levels + 1):
        lines.append(f"x{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "[" * depth + "x" + "]" * depth


def test_a_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "description: " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(PolicyError) as e:
        Policy.from_file(path)
    assert str(e.value).startswith(f"{path}: larger than {MAX_FILE_BYTES:,} bytes")
    text = BASE + "description: " + "x" * MAX_FILE_BYTES + "\n"
    with pytest.raises(PolicyError, match=f"p.yaml: .* over {MAX_FILE_BYTES:,} bytes"):
        Policy.from_text(text, source="p.yaml")


@pytest.mark.parametrize("field", ["description", "prompt.classifiers.0.extra_terms.sexual"])
def test_an_alias_bomb_is_refused_from_its_nodes(field: str) -> None:
    """The issue's case: a bomb in a typed field ran for minutes printing its expansion."""
    use = {
        "description": "description: *l8\n",
        "prompt.classifiers.0.extra_terms.sexual": (
            "prompt: {classifiers: [{kind: learned, extra_terms: {sexual: *l8}}]}\n"
        ),
    }[field]
    text = bomb(8) + BASE + use  # 9 ** 8: 43 million strings
    with pytest.raises(PolicyError) as e:
        Policy.from_text(text, source="bomb.yaml")
    message = str(e.value)
    assert message.startswith("bomb.yaml: line ")
    assert f"more than {MAX_NODES:,} values once its aliases are expanded" in message
    assert len(message) < 300


def test_aliases_within_the_budget_work_and_errors_show_a_cut_value() -> None:
    """Aliases within the budget still work; a wrong type shows a cut value, not the expansion."""
    shared = (
        BASE
        + "steering:\n  adapters:\n"
        + "    - closed_form: {erase: [nudity], preserve: &p [a person, a face]}\n"
        + "      categories: [sexual]\n"
        + "    - closed_form: {erase: [gore], preserve: *p}\n"
        + "      categories: [violence]\n"
        + "unjudged: [violence]\n"
    )
    policy = Policy.from_text(shared, source="ok.yaml")
    preserves = [a.closed_form.preserve for a in policy.steering.adapters]  # type: ignore[union-attr]
    assert preserves == [["a person", "a face"]] * 2
    with pytest.raises(PolicyError) as e:
        Policy.from_text(bomb(4) + BASE + "max_frames: *l4\n", source="t.yaml")  # 6,561
    line = next(x for x in str(e.value).splitlines() if x.startswith("t.yaml: max_frames:"))
    assert line.endswith("... (9 entries))") and len(line) < 400


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 100_000])
def test_deep_nesting_is_an_error_naming_the_limit_not_a_recursion_error(
    tmp_path: Path, suffix: str, depth: int
) -> None:
    body = (
        BASE + f"description: {nested(depth)}\n"
        if suffix == ".yaml"
        else json.dumps({"version": 1})[:-1] + f', "description": {nested(depth)}}}'
    ).replace("x", '"x"' if suffix == ".json" else "x")
    path = write(tmp_path, body, "p" + suffix)
    with pytest.raises(PolicyError) as e:
        Policy.from_file(path)
    assert str(e.value).startswith(f"{path}: ")
    assert f"nested deeper than {MAX_DEPTH} levels" in str(e.value)


def test_nesting_within_the_limit_parses_to_the_usual_error() -> None:
    with pytest.raises(PolicyError, match=r"t.yaml: description: Input should be a valid string"):
        Policy.from_text(BASE + f"description: {nested(MAX_DEPTH - 2)}\n", source="t.yaml")


def test_aliases_cannot_nest_past_the_depth_limit() -> None:
    """Each anchor is shallow, but an alias of an alias of ... expands deeper than the limit."""
    lines = ["a0: &a0 x"] + [f"a{i}: &a{i} [[[[*a{i - 1}]]]]" for i in range(1, 20)]
    with pytest.raises(PolicyError, match=f"deeper than {MAX_DEPTH} levels once its aliases"):
        Policy.from_text("\n".join(lines) + "\n", source="t.yaml")


def test_a_self_referencing_alias_is_refused() -> None:
    with pytest.raises(PolicyError, match=r"t.yaml: line 3: an alias refers to a node that"):
        Policy.from_text(BASE + "description: &d [*d]\n", source="t.yaml")


def test_a_list_over_the_length_limit_is_refused_by_the_reader_and_the_schema() -> None:
    terms = ", ".join(f"t{i}" for i in range(MAX_ITEMS + 1))
    text = (
        BASE
        + f"prompt: {{classifiers: [{{kind: prompt_rules, extra_terms: {{sexual: [{terms}]}}}}]}}"
    )
    with pytest.raises(PolicyError, match=f"t.yaml: line 3: more than {MAX_ITEMS:,} entries"):
        Policy.from_text(text, source="t.yaml")
    data: dict[str, Any] = {
        "classifiers": [{"kind": "static", "scores": {"sexual": 0.0}}],
        "steering": {
            "adapters": [
                {
                    "categories": ["sexual"],
                    "closed_form": {"erase": [f"c{i}" for i in range(MAX_ITEMS + 1)]},
                }
            ]
        },
    }
    with pytest.raises(PolicyError) as e:
        Policy.from_dict(data)
    (line,) = str(e.value).splitlines()
    assert line.startswith("<dict>: steering.adapters.0.closed_form.erase: List should have at")
    assert f"({MAX_ITEMS + 1:,} entries)" in line and len(line) < 400


def test_a_long_value_in_an_error_is_cut_with_its_length() -> None:
    with pytest.raises(PolicyError) as e:
        Policy.from_text(BASE + "max_frames: " + "9" * 5000 + "x\n", source="t.yaml")
    (line,) = str(e.value).splitlines()
    assert line.endswith("... (5,001 chars))") and len(line) < 400


def test_an_error_lists_at_most_twenty_problems_then_their_count() -> None:
    entries = ", ".join(f"c{i}" for i in range(MAX_ITEMS))
    with pytest.raises(PolicyError) as e:
        Policy.from_text(f"classifiers: [{entries}]\n", source="t.yaml")
    lines = str(e.value).splitlines()
    assert len(lines) == MAX_PROBLEMS + 1
    assert lines[0].startswith("t.yaml: classifiers.0: Input should be a valid dictionary")
    assert lines[-1] == f"t.yaml: and {MAX_ITEMS - MAX_PROBLEMS:,} more problems"


def test_settings_files_have_the_same_limits(tmp_path: Path) -> None:
    path = write(tmp_path, f"policy: strict\nray: {nested(1000)}\n", "serve.yaml")
    with pytest.raises(ValueError, match=f"serve.yaml: line 2: nested deeper than {MAX_DEPTH}"):
        ServiceSettings.from_file(path)
    path = write(tmp_path, "port: 8000\n" + bomb(7), "serve.yaml")
    with pytest.raises(ValueError, match=f"more than {MAX_NODES:,} values once its aliases"):
        ServiceSettings.from_file(path)


def test_policy_validate_and_serve_print_the_limit_cleanly(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + f"description: {nested(1000)}\n")
    expected = f"{path}: line 3: nested deeper than {MAX_DEPTH} levels"
    result = runner.invoke(app, ["policy", "validate", str(path)])
    assert result.exit_code == 1 and expected in result.output
    assert "Traceback" not in result.output and "recursion" not in result.output
    served = runner.invoke(app, ["serve", "--no-generation", "--policy", str(path)])
    assert served.exit_code == 2 and expected in served.output, served.output
    assert "Traceback" not in served.output


# -- blank terms ------------------------------------------------------------------------------


def _closed_form(**fields: Any) -> str:
    """A ``steering:`` section with one closed-form adapter of these ``closed_form`` fields."""
    spec = {"categories": ["sexual"], "closed_form": {"erase": ["nudity"], **fields}}
    return "steering: " + json.dumps({"adapters": [spec]})


CLOSED_FORM = "steering.adapters.0.closed_form"
#: (where the term list lives, as YAML; the dotted path and index the error must name)
BLANK = [
    (_closed_form(erase=["nudity", " "]), f"{CLOSED_FORM}.erase.1"),
    (_closed_form(preserve=["\t"]), f"{CLOSED_FORM}.preserve.0"),
    (_closed_form(templates=["{}", "  "]), f"{CLOSED_FORM}.templates.1"),
    (_closed_form(anchors={"nudity": " "}), f"{CLOSED_FORM}.anchors.nudity"),
    (_closed_form(anchors={" ": "x"}), f"{CLOSED_FORM}.anchors. .[key]"),
    (_closed_form(guide="  "), f"{CLOSED_FORM}.guide"),
    (
        "steering: {guidance: {categories: [sexual], concepts: [nudity, '\u3000']}}",
        "steering.guidance.concepts.1",
    ),
    (
        "prompt: {classifiers: [{kind: prompt_rules, extra_terms: {sexual: [' ']}}]}",
        "prompt.classifiers.0.extra_terms.sexual.0",
    ),
    (
        "prompt: {classifiers: [{kind: learned, extra_terms: {violence: [gore, '  ']}}]}",
        "prompt.classifiers.0.extra_terms.violence.1",
    ),
    (
        "prompt: {classifiers: [{kind: learned, extra_terms: {violence: ['!!!']}}]}",
        "prompt.classifiers.0.extra_terms: violence.0: term '!!!' is empty after normalisation",
    ),
    (
        "classifiers: [{kind: clip_concepts, model: ./m, concepts: "
        "[{phrase: ' ', category: sexual, threshold: 0.2}]}]",
        "classifiers.0.concepts.0.phrase",
    ),
    (
        "classifiers: [{kind: concept_world, unsafe: {sexual: [red, ' ']}}]",
        "classifiers.0.unsafe.sexual.1",
    ),
]


@pytest.mark.parametrize(("section", "where"), BLANK, ids=[w for _, w in BLANK])
def test_a_blank_term_is_refused_naming_field_and_index(section: str, where: str) -> None:
    text = "version: 1\n" + section + "\n"
    if not section.startswith("classifiers"):
        text += "classifiers: [{kind: static, scores: {sexual: 0.0, violence: 0.0}}]\n"
    with pytest.raises(PolicyError) as e:
        Policy.from_text(text, source="t.yaml")
    assert f"t.yaml: {where}" in str(e.value), str(e.value)
    assert "blank" in str(e.value) or "empty" in str(e.value)


def test_terms_are_stripped_and_duplicates_found_after_stripping() -> None:
    config = ClosedFormConfig(
        erase=[" nudity ", "gore\t"], preserve=[" a face"], anchors={" gore ": " paint "}
    )
    assert config.erase == ["nudity", "gore"] and config.preserve == ["a face"]
    assert config.anchors == {"gore": "paint"} and config.anchor_of("nudity") == ""
    with pytest.raises(ValueError, match=r"`erase` names a concept twice: \['nudity'\]"):
        ClosedFormConfig(erase=["nudity", " nudity"])
    policy = Policy.from_text(
        BASE + "steering: {guidance: {categories: [sexual], concepts: [' nudity ', gore]}}\n"
    )
    assert policy.steering.guidance is not None
    assert policy.steering.guidance.concepts == ["nudity", "gore"]


def test_the_largest_term_lists_validate_and_duplicates_are_still_found() -> None:
    """Duplicate checks count once (linear): ``MAX_ITEMS`` concepts, anchors and preserve
    prompts validate (50,000 concepts took a minute when each was counted in the list)."""
    concepts = [f"concept {i}" for i in range(MAX_ITEMS)]
    config = ClosedFormConfig(
        erase=concepts, preserve=concepts, anchors={c: "thing" for c in concepts}
    )
    assert len(config.erase) == MAX_ITEMS
    with pytest.raises(ValueError, match=r"twice: \['concept 7'\]"):
        ClosedFormConfig(erase=[*concepts[:-1], "concept 7"])
