"""Property tests (hypothesis) of policy files as text: YAML shapes an attacker would write.

Nesting depth (flow and block), alias fan-out, list lengths around the limit, blank and
whitespace terms, in every list of terms: each generated file is a policy or a
:class:`PolicyError` naming the file, with a bounded message; never another exception
(``RecursionError``, ``MemoryError``), and never a blank term accepted. (How long the worst
files take is measured by ``benchmarks/policy_limits.py``, not asserted here.)
"""

from __future__ import annotations

import json
from typing import NamedTuple

from hypothesis import event, given, settings
from hypothesis import strategies as st

from safety_lora.policies import Policy, PolicyError
from safety_lora.textfiles import MAX_DEPTH, MAX_ITEMS

#: The longest error a file may produce (a bomb's error once printed its expansion).
MAX_MESSAGE = 20_000

CLASSIFIERS = "classifiers: [{kind: static, scores: {sexual: 0.0, violence: 0.0}}]\n"
#: The lists of terms a policy holds, with ``TERMS`` where the list goes.
TERM_FIELDS = [
    "steering: {adapters: [{categories: [sexual], closed_form: {erase: TERMS}}]}",
    "steering: {adapters: [{categories: [sexual], closed_form: {erase: [x], preserve: TERMS}}]}",
    "steering: {guidance: {categories: [sexual], concepts: TERMS}}",
    "prompt: {classifiers: [{kind: prompt_rules, extra_terms: {violence: TERMS}}]}",
    "prompt: {classifiers: [{kind: learned, extra_terms: {sexual: TERMS}}]}",
    "classifiers: [{kind: concept_world, unsafe: {sexual: TERMS}}]",
]
#: Whitespace of several kinds, and a few letters: blank, padded and plain terms.
CHARS = st.sampled_from([" ", "\t", "\u3000", "\u00a0", "\u2003", "a", "r", "e", "d", "*", "!"])
terms = st.text(CHARS, max_size=5) | st.sampled_from(["red", " red ", "blue", "gore", "nudity"])


class Shape(NamedTuple):
    """One generated policy file, small to print: :meth:`text` writes it out."""

    field: str  #: one of TERM_FIELDS
    length: int  #: how long its list of terms is
    drawn: list[str]  #: terms spliced into the plain run at ``at``
    at: int
    depth: int  #: lists the term list is nested in
    block: bool  #: block style (``- - - x``) rather than flow (``[[[x]]]``)
    reuse: str  #: "plain", "fan_out" (an alias chain) or "shared" (one list, two fields)
    levels: int  #: for "fan_out": anchors in the chain, each ``fanout`` aliases of the last
    fanout: int

    def terms(self) -> str:
        """The YAML flow list of terms: the drawn ones spliced into a plain run."""
        plain = [f"red{i}" for i in range(max(0, self.length - len(self.drawn)))]
        at = min(self.at, len(plain))
        return json.dumps([*plain[:at], *self.drawn, *plain[at:]], ensure_ascii=True)

    def text(self) -> str:
        """The policy file."""
        base = "version: 1\n" + ("" if self.field.startswith("classifiers") else CLASSIFIERS)
        if self.block:  # the term field's key holds the list, nested in block style
            key = self.field.split(":")[0]
            return base + f"{key}:\n  " + "- " * self.depth + self.terms() + "\n"
        value = "[" * self.depth + self.terms() + "]" * self.depth
        if self.reuse == "fan_out":
            chain = ["&l0 [" + ", ".join(["red"] * self.fanout) + "]"]
            chain += [
                f"&l{i} [" + ", ".join([f"*l{i - 1}"] * self.fanout) + "]"
                for i in range(1, self.levels)
            ]
            alias = f"*l{self.levels - 1}"
            return (
                base
                + f"description: [{', '.join(chain)}]\n"
                + self.field.replace("TERMS", alias)
                + "\n"
            )
        if self.reuse == "shared":  # the same list under an anchor, reused by a second field
            other = (
                "prompt: {classifiers: [{kind: prompt_rules, extra_terms: {sexual: *t}}]}"
                if self.field.startswith("steering")
                else "steering: {guidance: {categories: [sexual], concepts: *t}}"
            )
            return base + self.field.replace("TERMS", f"&t {value}") + "\n" + other + "\n"
        return base + self.field.replace("TERMS", value) + "\n"


shapes = st.builds(
    Shape,
    field=st.sampled_from(TERM_FIELDS),
    length=st.sampled_from([0, 1, 3, MAX_ITEMS - 1, MAX_ITEMS, MAX_ITEMS + 1]),
    drawn=st.lists(terms, max_size=4),
    at=st.integers(0, MAX_ITEMS),
    depth=st.sampled_from([0, 0, 1, MAX_DEPTH - 3, MAX_DEPTH, MAX_DEPTH + 1, 1000, 5000]),
    block=st.booleans(),
    reuse=st.sampled_from(["plain", "fan_out", "shared"]),
    levels=st.integers(1, 10),
    fanout=st.integers(1, 12),
)


def _term_lists(policy: Policy) -> list[list[str]]:
    """Every list of terms in ``policy``."""
    found: list[list[str]] = []
    for adapter in policy.steering.adapters:
        closed = getattr(adapter, "closed_form", None)
        if closed is not None:
            found += [closed.erase, closed.preserve, closed.templates]
    if policy.steering.guidance is not None:
        found.append(policy.steering.guidance.concepts)
    for config in [*policy.prompt.classifiers, *policy.classifiers]:
        for mapping in (getattr(config, "extra_terms", {}), getattr(config, "unsafe", {})):
            found += list(mapping.values())
    return found


@settings(max_examples=20, deadline=None)
@given(shapes)
def test_any_policy_text_is_a_policy_or_a_policy_error(shape: Shape) -> None:
    text = shape.text()
    try:
        policy = Policy.from_text(text, source="fuzz.yaml")
    except PolicyError as e:
        message = str(e)
        event("refused: " + ("a limit" if "the limit for" in message else "invalid"))
        assert message.startswith("fuzz.yaml: "), message[:500]
        assert len(message) < MAX_MESSAGE, message[:500]
    else:
        event("validates")
        for found in _term_lists(policy):
            assert len(found) <= MAX_ITEMS
            assert all(term == term.strip() and term for term in found), found[:10]
