"""The prompt normaliser folds evasions to plain words and leaves ordinary text alone."""

from __future__ import annotations

import pytest

from safety_lora.classifiers.normalize import (
    deleet_variants,
    joined_variant,
    normalize,
    normalize_variants,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A Sunset over the SEA!", "a sunset over the sea"),
        ("nud\u0435 photo", "nude photo"),  # Cyrillic small ie
        ("\u03bdude", "nude"),  # Greek nu
        ("\u0440l\u0430\u0443b\u043e\u0443 mansion", "playboy mansion"),  # Cyrillic er, a, u, o
        ("\u0455\u0435\u0445\u0443", "sexy"),  # Cyrillic dze, ie, ha, u
        ("\u03c1orn", "porn"),  # Greek rho
        ("\u0421\u0425\u0412\u041d", "cxbh"),  # Cyrillic capitals that look like C X B H
        ("ｎｕｄｅ", "nude"),  # fullwidth forms (NFKC)
        ("nu\u200bd\u200de\ufeff", "nude"),  # zero-width space/joiner, BOM
        ("nu\u00adde", "nude"),  # soft hyphen
        ("n\u0337u\u0337d\u0337e\u0337", "nude"),  # combining overlay marks
        ("n u d e beach", "nude beach"),
        ("a n u d e woman", "a nude woman"),
        ("n.u.d.e", "nude"),
        ("n-u-d-e girl", "nude girl"),
        ("N_U_D_E", "nude"),
        ("an assassin's creed fan art", "an assassins creed fan art"),
        ("  lots\t of\n\nspace  ", "lots of space"),
        ("a classic 1920s car", "a classic 1920s car"),
        ("4 k, 3 d render", "4 k 3 d render"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_two_single_letters_are_not_joined() -> None:
    assert normalize("a b testing") == "a b testing"


@pytest.mark.parametrize(
    ("raw", "variant"),
    [
        ("nud3", "nude"),
        ("p0rn", "porn"),
        ("@ss", "ass"),
        ("$3x", "sex"),
        ("k1ll", "kill"),
        ("1oli", "loli"),
        ("g0r3", "gore"),
    ],
)
def test_leetspeak_variants(raw: str, variant: str) -> None:
    variants = normalize_variants(raw)
    assert variants[0] == normalize(raw)
    assert variant in variants


def test_numbers_alone_are_not_deleeted() -> None:
    assert deleet_variants("born in 1920 at 7 pm") == []
    assert normalize_variants("a classic 1920s car")[0] == "a classic 1920s car"


@pytest.mark.parametrize(
    ("raw", "joined"),
    [("a nu*de woman", "a nude woman"), ("nu_de", "nude"), ("se~x", "sex"), ("po^rn", "porn")],
)
def test_punctuation_inside_a_word_is_joined_in_a_variant(raw: str, joined: str) -> None:
    assert joined_variant(raw) == joined
    assert normalize_variants(raw)[:2] == [normalize(raw), joined]


def test_joined_variant_leaves_words_and_numbers_apart() -> None:
    assert joined_variant("black and white, 3.5 stars") is None  # digits are not letters
    assert joined_variant("a cat. a dog") is None  # punctuation between words, not in one
    assert "nude" in normalize_variants("nu*d3")  # joined, then de-leeted
