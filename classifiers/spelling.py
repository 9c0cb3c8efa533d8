"""Misspelt, split and slang words read back as the words a prompt check knows.

Shared by the rules' fuzzy terms (:mod:`~safety_lora.classifiers.prompt_rules`) and the
learned model (:mod:`~safety_lora.classifiers.learned_prompt`), which repairs a prompt before
reading it: ``hor ror`` -> ``horror``, ``rockte`` -> ``rocket``, ``bl00d`` -> ``blood``,
``unalive`` -> ``kill``.
A word is only ever changed when it is no English word (MiniLM's vocabulary), so ``tale``
stays ``tale`` even though the model knows ``tail``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources

import yaml

from safety_lora.classifiers.normalize import deleet_variants

__all__ = ["WordRepair", "deletes", "english_words", "one_edit", "slang"]

#: Words shorter than this are never respelt (too many neighbours one edit away).
MIN_RESPELL = 4
#: A word, a single letter included (split words leave them: ``b e`` -> ``be``).
_WORDS = re.compile(r"\w+")
#: Respellings remembered per repairer (the cache empties when full).
CACHE_WORDS = 65536


def deletes(word: str) -> set[str]:
    """``word`` with one letter left out, every way."""
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


def one_edit(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` differ by one insertion, deletion, substitution or swap of
    neighbours (Damerau-Levenshtein distance 1)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]]
            and a[diff[1]] == b[diff[0]]
        )  # fmt: skip
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


@cache
def english_words() -> frozenset[str]:
    """Whole words of MiniLM's English vocabulary (bundled): never read as a misspelling
    (``baked`` is not ``naked``, ``exotic`` not ``erotic``)."""
    ref = resources.files("safety_lora.classifiers").joinpath("rules/minilm_tokenizer.json")
    vocab = json.loads(ref.read_text(encoding="utf-8"))["model"]["vocab"]
    return frozenset(w for w in vocab if w.isalpha() and w.isascii())


@cache
def slang() -> tuple[re.Pattern[str], dict[str, str]]:
    """The bundled slang table (``rules/slang.yaml``): one whole-phrase pattern (longest
    phrase first: "self unaliving" is suicide before "unaliving" is kill) and phrase -> plain."""
    ref = resources.files("safety_lora.classifiers").joinpath("rules/slang.yaml")
    table: dict[str, list[str]] = yaml.safe_load(ref.read_text(encoding="utf-8"))["slang"]
    plain = {phrase: word for word, phrases in table.items() for phrase in phrases}
    ordered = sorted(plain, key=lambda phrase: (-len(phrase), phrase))
    return re.compile(r"\b(?:" + "|".join(map(re.escape, ordered)) + r")\b"), plain


class WordRepair:
    """Rewrites a normalised prompt toward ``known`` words (a model's vocabulary, each with
    its idf: the commoner of two candidates wins): slang to plain words, two pieces of a split
    word joined, a misspelt word respelt one edit away. Deterministic; cached per word."""

    def __init__(self, known: Mapping[str, float]) -> None:
        self.known = dict(known)
        self.english = english_words()
        self._edits: dict[str, list[str]] = {}
        self._cache: dict[str, str] = {}
        for word in self.known:
            if len(word) >= MIN_RESPELL and word.isalpha():
                for key in {word, *deletes(word)}:
                    self._edits.setdefault(key, []).append(word)

    def __call__(self, text: str) -> str:
        """``text`` repaired (unchanged when nothing needs it)."""
        pattern, plain = slang()
        text = pattern.sub(lambda m: plain[m.group()], text)
        spans = [(m.start(), m.end(), m.group()) for m in _WORDS.finditer(text)]
        out, last, i = [], 0, 0
        while i < len(spans):
            start, end, word = spans[i]
            if i + 1 < len(spans) and text[end : spans[i + 1][0]].isspace():
                joined = self._joined(word, spans[i + 1][2])
                if joined is not None:
                    out += [text[last:start], joined]
                    last, i = spans[i + 1][1], i + 2
                    continue
            fixed = self._respelt(word)
            if fixed != word:
                out += [text[last:start], fixed]
                last = end
            i += 1
        return "".join([*out, text[last:]]) if out else text

    def _joined(self, a: str, b: str) -> str | None:
        """``a + b`` when it is a known word and either piece is no word of its own (or two
        letters or fewer: ``nu de``, ``ha rry``)."""
        whole = a + b
        if whole not in self.known or not whole.isalpha():
            return None
        if min(len(a), len(b)) <= 2 or a not in self.english or b not in self.english:
            return whole
        return None

    def _respelt(self, word: str) -> str:
        """The commonest known word one edit from ``word`` (or its de-leeted form), when
        ``word`` is neither known nor English (else ``word``); remembered."""
        hit = self._cache.get(word)
        if hit is None:
            hit = self._cache[word] = self._nearest(word)
            if len(self._cache) > CACHE_WORDS:
                self._cache.clear()
        return hit

    def _nearest(self, word: str) -> str:
        if len(word) < MIN_RESPELL:  # "3d", "4k", "b4" stay as they are
            return word
        if not word.isalpha() and not word.isdigit():  # leetspeak: "bl00d", "k1ll"
            for plain in deleet_variants(word):
                fixed = self._nearest(plain) if plain.isalpha() else plain
                if fixed in self.known:
                    return fixed
            return word
        if not word.isalpha() or word in self.known or word in self.english:
            return word
        # the symmetric index: a word one edit (any kind) from ``word`` shares a key with it
        found = {w for key in {word, *deletes(word)} for w in self._edits.get(key, ())}
        found = {w for w in found if one_edit(word, w)}
        return min(found, key=lambda w: (self.known[w], w)) if found else word
