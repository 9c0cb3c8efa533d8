"""``kind: prompt_rules`` — weighted per-category terms and regexes on the normalised prompt.

A rule file (YAML, see ``rules/default.yaml``) lists, per category, groups of terms or
regexes with one weight each. Terms match whole words (``gun`` also matches ``guns``;
``decapitat*`` matches any word starting so); all terms of a file live in one Aho-Corasick
automaton. A category's score is the noisy-OR ``1 - prod(1 - w)`` of the distinct rules that
fired, so one explicit term (1.0) decides alone while several weak ones (0.35) add up.
Phrases under ``allow`` shield the words inside them (``blood orange``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import ahocorasick
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from safety_lora.classifiers.base import PromptScores
from safety_lora.classifiers.config import BUNDLED, ClassifierConfig, resolve_local
from safety_lora.classifiers.normalize import (
    deleet_variants,
    joined_variant,
    native,
    normalize,
    unspaced,
)
from safety_lora.classifiers.spelling import deletes, english_words, one_edit
from safety_lora.taxonomy import Category
from safety_lora.textfiles import (
    MAX_ITEMS,
    Terms,
    TextFileError,
    brief_repr,
    load_mapping,
    read_text,
)

__all__ = [
    "BUNDLED_FILES",
    "PromptRulesClassifier",
    "PromptRulesConfig",
    "check_extra_terms",
    "load_rules_text",
]

#: The bundled rule files: English, other languages' terms, the emoji table.
BUNDLED_FILES = ("default.yaml", "languages.yaml", "emoji.yaml")

_PLURAL_SUFFIXES = ("", "s", "es")
#: Fuzzy matching: terms this long or longer match words one edit away.
FUZZY_MIN = 5
#: Endings stripped to find a word's stem in the English vocabulary.
_SUFFIXES = ("s", "es", "ies", "ed", "ing", "er", "ers", "y", "ly")
#: Runs of one repeated letter ("nuuude"), collapsed to one letter for comparison.
_RUNS = re.compile(r"([a-z])\1+")


def _collapsed(word: str) -> str:
    return _RUNS.sub(r"\1", word)


_CATEGORIES = tuple(Category)
_ALLOW = -1


class _Group(BaseModel):
    """Terms and/or regexes sharing one weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weight: StrictFloat = Field(gt=0.0, le=1.0)
    context: StrictBool = False
    terms: Terms = Field(default_factory=list)
    regex: list[str] = Field(default_factory=list, max_length=MAX_ITEMS)
    requires: Terms = Field(default_factory=list)

    @field_validator("terms")
    @classmethod
    def _terms_not_empty(cls, terms: list[str]) -> list[str]:
        for term in terms:
            if not normalize(term.rstrip("*")):
                raise ValueError(f"term {term!r} is empty after normalisation")
        return terms

    @field_validator("regex")
    @classmethod
    def _regex_compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern.strip():
                raise ValueError(f"regex {pattern!r} is blank: it would match every prompt")
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"regex {pattern!r} does not compile: {e}") from e
        return patterns


class _RuleFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    allow: Terms = Field(default_factory=list)
    categories: dict[Category, list[_Group]]


@dataclass(frozen=True)
class _Rule:
    category: Category
    label: str
    weight: float
    context: bool = False

    @property
    def tag(self) -> str:
        """``category:label``, as reported in ``matches``."""
        return f"{self.category.value}:{self.label}"


def load_rules_text(rules: str | Path) -> list[tuple[str, str]]:
    """``(source name, YAML text)`` of each rule file: the :data:`BUNDLED_FILES` for
    ``"bundled"``, else the one file at that path."""
    if str(rules) == BUNDLED:
        folder = resources.files("safety_lora.classifiers").joinpath("rules")
        return [
            (f"bundled rules/{name}", folder.joinpath(name).read_text(encoding="utf-8"))
            for name in BUNDLED_FILES
        ]
    path = Path(rules)
    try:
        return [(str(path), read_text(path))]
    except TextFileError as e:
        raise ValueError(f"prompt_rules: rules file: {e}") from e


@functools.lru_cache(maxsize=64)
def _parse(source: str, text: str) -> _RuleFile:
    """A rules file's text parsed (cached by its text: every policy validation asks which
    categories the rules score, and the hardened YAML loader takes 0.1 s per bundled set)."""
    data = load_mapping(text, source=source)
    try:
        return _RuleFile.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        got = brief_repr(first.get("input"))
        raise ValueError(f"{source}: {where}: {first['msg']} (got {got})") from e


def _one_per_category(entries: list[_Rule | int]) -> tuple[_Rule | int, ...]:
    """Keep the heaviest rule per category for one key ("girls" is both girl+s and girls)."""
    best: dict[Category, _Rule] = {}
    for e in entries:
        if isinstance(e, _Rule) and (e.category not in best or e.weight > best[e.category].weight):
            best[e.category] = e
    allow = (_ALLOW,) if _ALLOW in entries else ()
    return allow + tuple(best.values())


def check_extra_terms(value: dict[Category, list[str]]) -> dict[Category, list[str]]:
    """``extra_terms`` as given, once each term keeps some text after normalisation (a term
    such as ``'!!!'`` or ``'*'`` would match nothing); the error names category and index."""
    for category, terms in value.items():
        for i, term in enumerate(terms):
            if not normalize(term.rstrip("*")):
                raise ValueError(
                    f"{category.value}.{i}: term {brief_repr(term)} is empty after "
                    f"normalisation (punctuation and spaces are dropped): it would match nothing"
                )
    return value


class PromptRulesClassifier:
    """Scores prompts with weighted per-category term and regex rules on the normalised text."""

    def __init__(
        self,
        *,
        rules: str | Path = BUNDLED,
        extra_terms: Mapping[Category, Sequence[str]] | None = None,
        fuzzy: bool = True,
        name: str = "prompt_rules",
    ) -> None:
        files = load_rules_text(rules)
        parsed = [_parse(source, text) for source, text in files]
        extra = {Category(c): list(ts) for c, ts in (extra_terms or {}).items()}
        for cat, terms in extra.items():
            for term in terms:
                if not normalize(term.rstrip("*")):
                    raise ValueError(f"extra_terms.{cat.value}: term {term!r} is empty")
        self.name = name
        blob = (
            "\n".join(text for _, text in files)
            + "\n"
            + json.dumps({c.value: t for c, t in extra.items()}, sort_keys=True)
        )
        self.fingerprint = "prompt_rules:" + hashlib.sha256(blob.encode()).hexdigest()[:16]
        self._automaton = ahocorasick.Automaton()
        # terms with letters beyond ASCII, matched on the text in its own script (native())
        self._native = ahocorasick.Automaton()
        # (pattern, rule, its tag, literals one of which must appear for it to be tried)
        self._regexes: list[tuple[re.Pattern[str], _Rule, str, tuple[str, ...]]] = []
        keys: dict[str, list[_Rule | int]] = {}
        native_keys: dict[str, list[_Rule | int]] = {}
        for phrase in (p for f in parsed for p in f.allow):
            keys.setdefault(f" {normalize(phrase)} ", []).append(_ALLOW)
        groups = [
            (c, g.weight, g.context, g.terms, g.regex, tuple(g.requires))
            for f in parsed
            for c, gs in f.categories.items()
            for g in gs
        ]
        groups += [(c, 1.0, False, ts, [], ()) for c, ts in extra.items()]
        for cat, weight, context, terms, patterns, requires in groups:
            for term in terms:
                if term.isascii():
                    rule = _Rule(cat, normalize(term.rstrip("*")), weight, context)
                    self._add_term(keys, rule, term)
                else:
                    rule = _Rule(cat, native(term.rstrip("*")), weight, context)
                    self._add_native(native_keys, rule, term)
            for pattern in patterns:
                rule = _Rule(cat, pattern, weight, context)
                self._regexes.append((re.compile(pattern), rule, rule.tag, requires))
        for automaton, table in ((self._automaton, keys), (self._native, native_keys)):
            for key, entries in table.items():
                kept = [e if isinstance(e, int) else (e, e.tag) for e in _one_per_category(entries)]
                automaton.add_word(key, (len(key), tuple(kept)))
            if table:
                automaton.make_automaton()
        # misspelt and stretched words: single-word ASCII terms that are evidence alone
        self._known = set(english_words()) if fuzzy else set()
        #: The single-word ASCII terms that are evidence alone (what fuzzy matching respells
        #: toward; the learned model joins split words into them too).
        self.words: set[str] = set()
        self._stretched: dict[str, list[_Rule]] = {}
        self._edits: dict[str, list[tuple[str, _Rule]]] = {}
        for cat, weight, context, terms, _, _ in groups if fuzzy else ():
            for term in terms:
                label = normalize(term)
                if context or weight < 0.6 or not term.isascii() or not label.isalpha():
                    continue
                rule = _Rule(cat, label, weight)
                self.words.add(label)
                self._known |= {label, label + "s", label + "es"}
                self._stretched.setdefault(_collapsed(label), []).append(rule)
                if len(label) >= FUZZY_MIN:
                    for key in {label, *deletes(label)}:
                        self._edits.setdefault(key, []).append((label, rule))

    @staticmethod
    def _add_term(keys: dict[str, list[_Rule | int]], rule: _Rule, raw: str) -> None:
        if raw.endswith("*"):
            keys.setdefault(f" {rule.label}", []).append(rule)
            return
        for suffix in _PLURAL_SUFFIXES:
            keys.setdefault(f" {rule.label}{suffix} ", []).append(rule)

    @staticmethod
    def _add_native(keys: dict[str, list[_Rule | int]], rule: _Rule, raw: str) -> None:
        """A term in its own script: anywhere in the text when it holds a character of a
        script written without spaces (CJK, Thai) or an emoji, else as a whole word (a
        trailing * for any ending: ``ребен*``)."""
        if any(unspaced(ch) for ch in rule.label):
            keys.setdefault(rule.label, []).append(rule)
        elif raw.endswith("*"):
            keys.setdefault(f" {rule.label}", []).append(rule)
        else:
            keys.setdefault(f" {rule.label} ", []).append(rule)

    def _fired(self, text: str, automaton: ahocorasick.Automaton | None = None) -> dict[str, _Rule]:
        haystack = f" {text} "
        allowed: list[tuple[int, int]] = []
        hits: list[tuple[int, int, _Rule, str]] = []
        if automaton is not None:  # native terms only, no regexes
            for end, (length, entries) in automaton.iter(haystack):
                for entry in entries:
                    if isinstance(entry, tuple):
                        hits.append((end - length + 1, end, *entry))
            return {tag: rule for _, _, rule, tag in hits}
        for end, (length, entries) in self._automaton.iter(haystack):
            for entry in entries:
                if isinstance(entry, tuple):
                    hits.append((end - length + 1, end, *entry))
                else:
                    allowed.append((end - length + 1, end))
        fired: dict[str, _Rule] = {}
        for start, end, rule, tag in hits:
            if not allowed or not any(a <= start and end <= b for a, b in allowed):
                fired[tag] = rule
        for pattern, rule, tag, requires in self._regexes:
            if (not requires or any(r in text for r in requires)) and pattern.search(text):
                fired[tag] = rule
        return fired

    def _is_known(self, word: str) -> bool:
        """``word`` or its stem (``kites``, ``frying``, ``patties``) is an English word."""
        if word in self._known:
            return True
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix) + 2:
                stem = word[: -len(suffix)]
                if any(stem + end in self._known for end in ("", "e", "y")):
                    return True
        return False

    def _fuzzy(self, text: str) -> dict[str, _Rule]:
        """Rules whose term a word of ``text`` misspells (one edit, terms of
        :data:`FUZZY_MIN` letters or more) or stretches (``nuuude``), the word being no
        English word; tagged ``category:term~``."""
        fired: dict[str, _Rule] = {}
        for word in set(text.split()):
            if len(word) < 4 or not word.isalpha() or self._is_known(word):
                continue
            found = list(self._stretched.get(_collapsed(word), ())) if _RUNS.search(word) else []
            for key in {word, *deletes(word)}:
                found += [r for label, r in self._edits.get(key, ()) if one_edit(word, label)]
            for rule in found:
                fired[f"{rule.tag}~"] = rule
        return fired

    def classify(self, prompts: Sequence[str]) -> list[PromptScores]:
        """Per prompt, each category's noisy-OR over the distinct rules fired on its normalised,
        de-leeted and punctuation-joined forms (context rules only grade a category another rule
        fired for); ``matches`` holds the fired rules' ``category:label`` tags."""
        return [self._classify_one(p) for p in prompts]

    def _classify_one(self, prompt: str) -> PromptScores:
        plain = normalize(prompt)
        fired = self._fired(plain)
        for variant in deleet_variants(plain):
            fired.update(self._fired(variant))
        joined = joined_variant(prompt)
        if joined is not None and joined != plain:
            for variant in (joined, *deleet_variants(joined)):
                fired.update(self._fired(variant))
        if self._edits or self._stretched:
            fired.update(self._fuzzy(plain))
        if not prompt.isascii() and self._native.kind == ahocorasick.AHOCORASICK:
            fired.update(self._fired(native(prompt), self._native))
        scores = dict.fromkeys(_CATEGORIES, 0.0)
        if fired:
            # noisy-OR per category; context rules only grade what another rule fired for
            miss: dict[Category, float] = {}
            decisive: set[Category] = set()
            for rule in fired.values():
                miss[rule.category] = miss.get(rule.category, 1.0) * (1.0 - rule.weight)
                if not rule.context:
                    decisive.add(rule.category)
            for cat in decisive:
                scores[cat] = min(1.0, 1.0 - miss[cat])
        return PromptScores(scores=scores, matches=tuple(fired), normalized=plain)


class PromptRulesConfig(ClassifierConfig):
    """Term/regex prompt rules: the bundled set or a YAML file, plus user ``extra_terms``."""

    HOW = "`extra_terms` or a rules file"
    kind: Literal["prompt_rules"] = "prompt_rules"
    rules: str = BUNDLED
    extra_terms: dict[Category, Terms] = Field(default_factory=dict)

    @field_validator("rules")
    @classmethod
    def _relative_to_policy(cls, value: str, info: ValidationInfo) -> str:
        return resolve_local(value, info)

    @field_validator("extra_terms")
    @classmethod
    def _terms_match_something(cls, value: dict[Category, list[str]]) -> dict[Category, list[str]]:
        return check_extra_terms(value)

    def categories(self) -> frozenset[Category]:
        """The categories with a rule group in the rules file, plus those given ``extra_terms``
        (reads the file)."""
        declared = [_parse(s, t).categories for s, t in load_rules_text(self.rules)]
        return frozenset(c for d in declared for c, groups in d.items() if groups) | {
            c for c, terms in self.extra_terms.items() if terms
        }

    def build(self) -> PromptRulesClassifier:
        """A :class:`PromptRulesClassifier` on ``rules`` plus ``extra_terms``."""
        return PromptRulesClassifier(rules=self.rules, extra_terms=self.extra_terms)
