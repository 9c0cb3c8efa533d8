"""Prompt normaliser: folds the usual filter evasions back to plain lowercase ASCII words.

Handles Unicode compatibility forms (NFKC), homoglyphs (Cyrillic and Greek letters that
look like Latin ones fold to the letter they look like: ``рlауbоу`` -> ``playboy``, where
transliteration would give ``rlaubou``), other confusables (via ``anyascii``),
zero-width and other format characters, separated letters (``n.u.d.e``, ``n u d e``) and,
in a separate variant, leetspeak (``p0rn``), so that ordinary numbers such as ``1920s``
survive in the plain form.
"""

from __future__ import annotations

import re
import unicodedata

from anyascii import anyascii

__all__ = [
    "deleet_variants",
    "displayed",
    "joined_variant",
    "letter_scripts",
    "native",
    "normalize",
    "normalize_variants",
    "unspaced",
]

# One pass over ASCII text: lowercase, apostrophes vanish ("assassin's" -> "assassins"), and
# so does every control character but tab, newline and carriage return ("nu\x00de" -> "nude").
_PREPARE: dict[int, str | None] = {i: chr(i).lower() for i in range(128)}
_PREPARE.update(dict.fromkeys(map(ord, "'`"), None))
_PREPARE.update({i: None for i in [*range(0, 32), 127] if chr(i) not in "\t\n\r"})
# Three or more single characters with separators between them: "n.u.d.e", "n u d e", "n-u-d-e".
# A run never starts with the English words "a " / "i " ("a n u d e woman" -> "a nude woman").
_SEPARATED = re.compile(
    r"(?<![^\W_])(?![ai]\s)(?:[a-z0-9@$][\s.\-_*+|/\\~]+){2,}[a-z0-9@$](?![^\W_])"
)
_SEPARATORS = re.compile(r"[\s.\-_*+|/\\~]+")
# A cheaper superset of _SEPARATED (no lookarounds), tried first: most prompts have no run.
_SEPARATED_HINT = re.compile(
    r"(?:^|[^a-z0-9@$])[a-z0-9@$][\s.\-_*+|/\\~]+[a-z0-9@$][\s.\-_*+|/\\~]+[a-z0-9@$](?:$|[^a-z0-9@$])"
)
#: ASCII text -> lowercase-word characters kept, every other character a space.
_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@$")
_TO_SPACES = {i: (chr(i) if chr(i) in _KEEP else " ") for i in range(128)}
_LEET_CHARS = re.compile(r"[0-9@$]")
# A token mixing letters with leet characters ("p0rn", "nud3", "@ss", "s3x").
_LEET_TOKEN = re.compile(r"[a-z0-9@$]*(?:[a-z][0-9@$]|[0-9@$][a-z])[a-z0-9@$]*")
_LEET_I = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "9": "g",
        "@": "a",
        "$": "s",
    }
)
_LEET_L = str.maketrans({"1": "l"})


# Look-alikes whose transliteration is another letter than the one they show (Cyrillic
# er, es, u, ha, dze, Greek rho, chi, upsilon...): an evasion means the letter it looks like.
_LOOKALIKES = str.maketrans(
    {
        "\u0440": "p",
        "\u0420": "P",
        "\u0441": "c",
        "\u0421": "C",
        "\u0443": "y",
        "\u0423": "Y",
        "\u0445": "x",
        "\u0425": "X",
        "\u0412": "B",
        "\u041d": "H",
        "\u0455": "s",
        "\u0405": "S",
        "\u04cf": "l",
        "\u03c1": "p",
        "\u03a1": "P",
        "\u03c7": "x",
        "\u03a7": "X",
        "\u03c5": "u",
        "\u03f2": "c",
        "\u0251": "a",
    }
)


def _is_dropped(ch: str) -> bool:
    """Zero-width joiners, soft hyphens, bidi marks, control and other invisible characters."""
    return unicodedata.category(ch) in ("Cf", "Cc", "Mn") and ch not in "\t\n\r"


def _fold_unicode(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if not _is_dropped(ch))
    return anyascii(text.translate(_LOOKALIKES))


def _join_separated(match: re.Match[str]) -> str:
    return " " + _SEPARATORS.sub("", match.group(0)) + " "


def normalize(text: str) -> str:
    """Return ``text`` as lowercase ASCII words separated by single spaces (leetspeak kept).

    ``"Ｎ.u.d.е  Ph\u200boto!"`` -> ``"nude photo"``.
    """
    # Every control/format character goes, ASCII or not (anyascii folds the rest to ASCII).
    if not text.isascii():
        text = _fold_unicode(text)
    text = text.translate(_PREPARE)
    if _SEPARATED_HINT.search(text):
        text = _SEPARATED.sub(_join_separated, text)
    return " ".join(text.translate(_TO_SPACES).split())


def deleet_variants(normalized: str) -> list[str]:
    """De-leeted forms of an already normalised text; empty when it has no leet tokens.

    Only tokens that mix letters with digits/``@``/``$`` are folded, so ``"1920"`` stays;
    ``1`` is tried both as ``i`` and as ``l`` (``k1ll``, ``1oli``).
    """
    if not _LEET_CHARS.search(normalized) or not _LEET_TOKEN.search(normalized):
        return []
    as_i = _LEET_TOKEN.sub(lambda m: m.group(0).translate(_LEET_I), normalized)
    out = [as_i]
    if "1" in normalized:
        as_l = _LEET_TOKEN.sub(
            lambda m: m.group(0).translate(_LEET_L).translate(_LEET_I), normalized
        )
        out.append(as_l)
    return out


# Punctuation inside a word, between two letters: "nu*de", "nu_de", "se~x", "po.rn".
_IN_WORD_NOISE = re.compile(r"(?<=[^\W\d_])[*_~^.+|]+(?=[^\W\d_])")
# A cheaper superset without the look-behind, tried first (a charset first is scanned fast).
_IN_WORD_HINT = re.compile(r"[*_~^.+|][^\W\d_]")


def joined_variant(text: str) -> str | None:
    """``text`` normalised with punctuation between letters removed (``"nu*de"`` -> ``"nude"``),
    or None when it has none: a form to scan besides the plain one, which splits such words."""
    if not _IN_WORD_HINT.search(text) or not _IN_WORD_NOISE.search(text):
        return None
    return normalize(_IN_WORD_NOISE.sub("", text))


def normalize_variants(text: str) -> list[str]:
    """The normalised text, its form with in-word punctuation removed, and their de-leeted
    variants (the forms a matcher should scan)."""
    plain = normalize(text)
    joined = joined_variant(text)
    forms = [plain] if joined is None or joined == plain else [plain, joined]
    return [*forms, *(v for form in forms for v in deleet_variants(form))]


# Scripts written without spaces between words (Han, kana, Hangul syllables and jamo, Thai,
# Lao, Khmer, Myanmar): their rule terms match as substrings. Emoji and other symbols too.
_UNSPACED = (
    (0x0E00, 0x0EFF),
    (0x1000, 0x109F),
    (0x1100, 0x11FF),
    (0x1780, 0x17FF),
    (0x3040, 0x30FF),
    (0x3130, 0x318F),
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7AF),
    (0xF900, 0xFAFF),
    (0x20000, 0x3FFFF),
)
# Emoji skin tones and variation selectors: "👶🏽" is "👶".
_EMOJI_MODIFIERS = frozenset([*range(0x1F3FB, 0x1F400), 0xFE0E, 0xFE0F])


def unspaced(ch: str) -> bool:
    """True for a character of a script written without spaces, or a symbol such as an emoji
    (rule terms containing one match anywhere, not only as whole words)."""
    code = ord(ch)
    return unicodedata.category(ch) == "So" or any(a <= code <= b for a, b in _UNSPACED)


def native(text: str) -> str:
    """``text`` in its own script: NFKC, case-folded, invisible characters and emoji
    modifiers dropped, punctuation turned to spaces; letters keep their accents and script
    (``"¡Niña!"`` -> ``"niña"``), so terms of other languages match without the false
    matches transliteration makes (``niña`` is not the name ``Nina``)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ord(ch) in _EMOJI_MODIFIERS or (cat in ("Cf", "Cc") and ch not in "\t\n\r"):
            continue
        out.append(" " if cat[0] in "PZ" or ch in "\t\n\r" else ch)
    return " ".join("".join(out).split())


def letter_scripts(text: str) -> tuple[int, int]:
    """(letters in Latin script, letters in any other script) of ``text``."""
    latin = other = 0
    for ch in text:
        if ch.isalpha():
            if ch.isascii() or unicodedata.name(ch, "").startswith("LATIN"):
                latin += 1
            else:
                other += 1
    return latin, other


_RLO, _LRO, _RLE, _LRE, _PDF = "\u202e", "\u202d", "\u202b", "\u202a", "\u202c"
_ISOLATES = "\u2066\u2067\u2068\u2069"  # LRI RLI FSI PDI


def displayed(text: str) -> str:
    """``text`` in the order a reader sees it, bidi controls resolved and dropped: a
    right-to-left override (RLO ... PDF, or to the line's end) shows its characters reversed
    (``"a \\u202eedun\\u202c child"`` reads ``"a nude child"``); embeddings (RLE, LRE),
    isolates (LRI, RLI, FSI, PDI) and left-to-right overrides do not reorder Latin letters.
    A small resolver for the controls an evasion uses, not the full bidi algorithm."""
    if not any(ch in text for ch in (_RLO, _LRO, _RLE, _LRE, _PDF, *_ISOLATES)):
        return text
    lines = []
    for line in text.split("\n"):
        # per open level: (is RLO, its characters and closed inner runs)
        stack: list[tuple[bool, list[str]]] = [(False, [])]

        def close(stack: list[tuple[bool, list[str]]] = stack) -> None:
            rtl, parts = stack.pop()  # a closed run moves as one piece in its parent
            stack[-1][1].append("".join(reversed(parts) if rtl else parts))

        for ch in line:
            if ch in (_RLO, _LRO, _RLE, _LRE):
                stack.append((ch == _RLO, []))
            elif ch == _PDF:
                if len(stack) > 1:
                    close()
            elif ch not in _ISOLATES:
                stack[-1][1].append(ch)
        while len(stack) > 1:
            close()
        lines.append("".join(stack[0][1]))
    return "\n".join(lines)
