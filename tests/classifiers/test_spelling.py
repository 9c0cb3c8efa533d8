"""Slang, split, misspelt and leet words read back as known words (classifiers.spelling)."""

from __future__ import annotations

import pytest

from safety_lora.classifiers.learned_prompt import LearnedPromptConfig
from safety_lora.classifiers.spelling import WordRepair, one_edit
from safety_lora.policies import Policy
from safety_lora.policies.engine import PolicyEngine
from safety_lora.taxonomy import Category, PromptAction

KNOWN = {"horror": 3.0, "rocket": 4.0, "blowing": 4.5, "film": 2.0, "blood": 3.5, "gore": 5.0}


@pytest.fixture(scope="module")
def repair() -> WordRepair:
    return WordRepair(KNOWN)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("new hor ror movie", "new horror movie"),  # neither piece is a word
        ("fi lm still", "film still"),  # a piece of two letters
        ("rockte launcher bloiwng up", "rocket launcher blowing up"),  # swapped letters
        ("a bl00d soaked g0re scene", "a blood soaked gore scene"),  # leetspeak
        ("a man with a boomstick, unalive", "a man with a gun, kill"),  # slang
        ("crimson-soaked arms", "crimson-soaked arms"),  # slang is matched on normalised text
        ("crimson soaked arms", "bloody arms"),
    ],
)
def test_words_are_read_back_as_known_words(repair: WordRepair, text: str, expected: str) -> None:
    assert repair(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a tale of a horse",  # "tale" is English: never respelt, though "tail" might be known
        "the rapist",  # two English words are never joined
        "a 3d render in 4k, 1920s",  # short and numeric tokens stay
        "a cat on a sofa",
    ],
)
def test_ordinary_text_is_left_alone(repair: WordRepair, text: str) -> None:
    assert repair(text) == text


def test_the_commonest_candidate_wins() -> None:
    repair = WordRepair({"bead": 2.0, "bend": 5.0})  # "bexd" is one edit from both
    assert repair("a bexd") == "a bead"
    assert one_edit("abcd", "acbd") and one_edit("abc", "abxc") and not one_edit("abc", "cba")


def test_the_learned_check_reads_repaired_prompts_and_their_rules() -> None:
    learned = LearnedPromptConfig(cache_size=0).build()
    plain, slang = learned.classify(
        ["a girl pointing a gun at a man", "a girl pointing a boomstick at a man"]
    )
    assert slang.scores[Category.VIOLENCE] == pytest.approx(plain.scores[Category.VIOLENCE])
    assert any(m.startswith("violence:") for m in slang.matches)  # the rules saw "gun" too


def test_split_child_terms_meet_the_hard_rule() -> None:
    engine = PolicyEngine(Policy.load("strict"))
    for prompt in ("a nu de child", "a n u d e child", "a nakde child"):
        assert engine.check_prompt(prompt).action is PromptAction.REFUSE, prompt
