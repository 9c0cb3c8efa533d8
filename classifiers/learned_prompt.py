"""``kind: learned`` — the default prompt classifier: a calibrated model over four views.

Each normalised prompt (:mod:`~safety_lora.classifiers.normalize`) is first repaired
(:mod:`~safety_lora.classifiers.spelling`: slang, split, misspelt and leet words read back as
known words), then read four ways:

1. **static MiniLM**: the mean of all-MiniLM-L6-v2's own contextual vector for each of its
   wordpiece tokens (distilled once from the model, PCA to 128 dimensions, weighted by how
   rare the token is), so subwords carry meaning even for misspelt or unseen words;
2. **word n-grams**: tf-idf of words and word pairs seen in the training prompts;
3. **character n-grams**: tf-idf of 2-5 letter n-grams inside words;
4. **the bundled prompt rules' scores**, on the typed and the repaired text (the higher).

A logistic regression per category, learnt from image prompts alone, turns them into a raw
probability, scaled by a gate (how much the prompt reads like an image prompt rather than an
everyday caption), and an isotonic map fitted on held-out folds makes it a calibrated one:
among held-out prompts scored about 0.8, about 80% were unsafe. Explicit rule hits (score
1.0, user ``extra_terms`` too) pass through, so do the rules' ``sexual`` scores where they see
a child, and ``minors``, which has no learned head, comes from the rules, so the hard rule
keeps its exact terms. Everything ships in the package (about 9 MB, no torch at run time):
``rules/prompt_model.safetensors`` (made by ``benchmarks/train_prompt_model.py``) and MiniLM's
tokenizer (``rules/minilm_tokenizer.json``, Apache-2.0 like the model). It scores thousands of
prompts a second on one core; recent prompts are cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import struct
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, StrictFloat, StrictInt, ValidationInfo, field_validator

from safety_lora.classifiers.base import PromptScores
from safety_lora.classifiers.config import BUNDLED, ClassifierConfig, resolve_local
from safety_lora.classifiers.prompt_rules import (
    PromptRulesClassifier,
    PromptRulesConfig,
    check_extra_terms,
)
from safety_lora.classifiers.spelling import WordRepair
from safety_lora.taxonomy import Category
from safety_lora.textfiles import Terms

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = [
    "FORMAT",
    "LearnedPromptClassifier",
    "LearnedPromptConfig",
    "PromptModel",
    "load_model",
    "tokenizer",
]

FORMAT = "safety_lora.prompt_model/1"
#: The learned model's highest score: 1.0 means an explicit rule term, never a model guess.
CERTAIN = 0.99
#: A rules minors score from which the rules' sexual score passes through whole (the hard
#: rule's highest threshold, ``MINORS_MAX_THRESHOLD``).
MINORS_AT = 0.5
#: sklearn's default word pattern, which the word vocabulary was fitted with.
_WORD = re.compile(r"\b\w\w+\b")


#: Character n-gram lengths (inside words, padded with a space at each end).
CHAR_NGRAMS = (2, 5)


def char_grams(text: str) -> list[str]:
    """``text``'s character n-grams within each whitespace-separated word, the word padded
    with a space at each end (scikit-learn's ``char_wb`` analyser, which training uses)."""
    low, high = CHAR_NGRAMS
    out: list[str] = []
    for word in text.split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if size <= n:  # a short word is counted once, whole
                out.append(padded)
                break
            out.extend(padded[i : i + n] for i in range(size - n + 1))
    return out


def _tfidf(
    grams: Counter[str], index: Mapping[str, int], idf: NDArray[np.float32], offset: int
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Sublinear-tf tf-idf of the ``grams`` ``index`` knows, l2-normalised; columns + offset."""
    found = [(col, count) for gram, count in grams.items() if (col := index.get(gram)) is not None]
    if not found:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    cols, counts = np.array(found, dtype=np.int64).T
    values = (1.0 + np.log(counts)) * idf[cols].astype(np.float64)
    return cols + offset, values / np.sqrt((values**2).sum())


@dataclass(frozen=True)
class PromptModel:
    """Everything the classifier computes with, as stored in one safetensors file.

    ``token_vectors`` ``(T, E)`` and ``token_weights`` ``(T,)`` are indexed by tokenizer id;
    ``vocabulary``/``idf`` are the word n-grams, ``char_vocabulary``/``char_idf`` the
    character n-grams (none in a model made before them); ``weight`` is ``(C, V + H + E + R)``
    over [word tf-idf, character tf-idf, static vector, rule scores of ``rule_categories``];
    ``calib_x``/``calib_y`` ``(C, K)`` map raw probabilities to calibrated ones.
    ``gate_weight`` ``(V + H + E + R,)``, ``gate_bias`` and ``gate_power`` ``(1,)`` (empty in a
    model made before the gate) score how much a prompt reads like a text-to-image prompt
    rather than an everyday caption; each head's probability is multiplied by that
    probability to the power ``gate_power``, so the heads can learn content from image
    prompts alone.
    """

    categories: tuple[Category, ...]
    rule_categories: tuple[Category, ...]
    vocabulary: tuple[str, ...]
    idf: NDArray[np.float32]
    token_vectors: NDArray[np.float16]
    token_weights: NDArray[np.float32]
    weight: NDArray[np.float32]
    bias: NDArray[np.float32]
    calib_x: NDArray[np.float32]
    calib_y: NDArray[np.float32]
    metadata: Mapping[str, str]
    char_vocabulary: tuple[str, ...] = ()
    char_idf: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    gate_weight: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    gate_bias: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    gate_power: NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))

    def __post_init__(self) -> None:
        c, v, h = len(self.categories), len(self.vocabulary), len(self.char_vocabulary)
        e, r = self.token_vectors.shape[1], len(self.rule_categories)
        problems = []
        if self.weight.shape != (c, v + h + e + r):
            problems.append(f"weight {self.weight.shape} is not ({c}, {v + h + e + r})")
        if self.idf.shape != (v,) or self.char_idf.shape != (h,) or self.bias.shape != (c,):
            problems.append(
                f"idf {self.idf.shape} / char_idf {self.char_idf.shape} / bias "
                f"{self.bias.shape} do not fit"
            )
        if self.token_weights.shape != (self.token_vectors.shape[0],):
            problems.append("token_weights do not fit token_vectors")
        if self.calib_x.shape != self.calib_y.shape or self.calib_x.shape[0] != c:
            problems.append(f"calibration shapes {self.calib_x.shape}/{self.calib_y.shape}")
        gate = (self.gate_weight.shape, self.gate_bias.shape, self.gate_power.shape)
        if gate not in {((0,), (0,), (0,)), ((v + h + e + r,), (1,), (1,))}:
            problems.append(f"gate shapes {gate} do not fit width {v + h + e + r}")
        if problems:
            raise ValueError("prompt model: " + "; ".join(problems))

    @cached_property
    def index(self) -> dict[str, int]:
        """Word n-gram -> column."""
        return {term: i for i, term in enumerate(self.vocabulary)}

    @cached_property
    def char_index(self) -> dict[str, int]:
        """Character n-gram -> column (after the word n-grams')."""
        return {gram: i for i, gram in enumerate(self.char_vocabulary)}

    # -- features ----------------------------------------------------------------------------

    def word_features(self, text: str) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Sparse tf-idf of ``text``: its words and word pairs, then its character n-grams
        (columns after the words'), each block l2-normalised with sublinear tf."""
        words = _WORD.findall(text)
        grams = Counter(words)
        grams.update(f"{a} {b}" for a, b in itertools.pairwise(words))
        cols, vals = _tfidf(grams, self.index, self.idf, 0)
        if not self.char_vocabulary:
            return cols, vals
        ccols, cvals = _tfidf(
            Counter(char_grams(text)), self.char_index, self.char_idf, len(self.vocabulary)
        )
        return np.concatenate([cols, ccols]), np.concatenate([vals, cvals])

    def static_vector(self, token_ids: Sequence[int]) -> NDArray[np.float64]:
        """The rarity-weighted mean token vector, unit length (zeros for no tokens)."""
        if not token_ids:
            return np.zeros(self.token_vectors.shape[1])
        ids = np.asarray(token_ids, dtype=np.int64)
        weights = self.token_weights[ids].astype(np.float64)
        vector = (self.token_vectors[ids].astype(np.float64) * weights[:, None]).sum(0)
        vector /= max(float(weights.sum()), 1e-12)
        norm = float(np.linalg.norm(vector))
        out: NDArray[np.float64] = vector / norm if norm > 0 else vector
        return out

    @cached_property
    def _rows64(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Weights and biases of the heads, then of the gate where there is one: one product."""
        rows = np.concatenate([self.weight, self.gate_weight.reshape(-1, self.weight.shape[1])])
        bias = np.concatenate([self.bias, self.gate_bias])
        return rows.astype(np.float64), bias.astype(np.float64)

    def raw(
        self,
        words: tuple[NDArray[np.int64], NDArray[np.float64]],
        static: NDArray[np.float64],
        rules: NDArray[np.float64],
    ) -> NDArray[np.float64]:
        """Uncalibrated per-category probabilities for one prompt's features."""
        cols, vals = words
        v = len(self.vocabulary) + len(self.char_vocabulary)
        w, bias = self._rows64
        logits = bias + w[:, v:] @ np.concatenate([static, rules])
        if cols.size:
            logits = logits + w[:, cols] @ vals
        raw = np.asarray(1.0 / (1.0 + np.exp(-logits)))
        if not self.gate_weight.size:
            return raw
        out: NDArray[np.float64] = raw[:-1] * raw[-1] ** float(self.gate_power[0])
        return out

    def calibrated(self, raw: NDArray[np.float64]) -> NDArray[np.float64]:
        """The isotonic maps fitted on held-out folds, per category, at most :data:`CERTAIN`
        (a score of 1.0 is kept for explicit rule hits)."""
        values = [np.interp(raw[k], self.calib_x[k], self.calib_y[k]) for k in range(len(raw))]
        out: NDArray[np.float64] = np.minimum(np.array(values), CERTAIN)
        return out

    # -- file --------------------------------------------------------------------------------

    _ARRAYS = ("idf", "token_vectors", "token_weights", "weight", "bias", "calib_x", "calib_y")
    #: Arrays a model may lack (made before them): empty when absent.
    _OPTIONAL = ("char_idf", "gate_weight", "gate_bias", "gate_power")

    def to_bytes(self) -> bytes:
        """The safetensors serialisation (sorted header: byte-for-byte reproducible)."""
        meta = {
            **self.metadata,
            "format": FORMAT,
            "categories": ",".join(c.value for c in self.categories),
            "rule_categories": ",".join(c.value for c in self.rule_categories),
            "vocabulary": json.dumps(list(self.vocabulary)),
            **(
                {"char_vocabulary": json.dumps(list(self.char_vocabulary))}
                if self.char_vocabulary
                else {}
            ),
        }
        header: dict[str, Any] = {"__metadata__": dict(sorted(meta.items()))}
        blobs, offset = [], 0
        present = [k for k in self._OPTIONAL if getattr(self, k).size]
        for key in sorted((*self._ARRAYS, *present)):
            array = getattr(self, key)
            kind = "F16" if array.dtype == np.float16 else "F32"
            blob = np.ascontiguousarray(array, dtype="<f2" if kind == "F16" else "<f4").tobytes()
            header[key] = {"dtype": kind, "shape": list(array.shape),
                           "data_offsets": [offset, offset + len(blob)]}  # fmt: skip
            blobs.append(blob)
            offset += len(blob)
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + b"".join(blobs)

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str) -> PromptModel:
        """Parse a model file's bytes; errors name ``source``."""
        from safetensors.numpy import load

        try:
            (size,) = struct.unpack("<Q", data[:8])
            meta = dict(json.loads(data[8 : 8 + size]).get("__metadata__") or {})
            arrays = load(data)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"learned: {source} is not a valid safetensors file: {e}") from e
        if meta.get("format") != FORMAT:
            raise ValueError(f"learned: {source} is not a {FORMAT} model ({meta.get('format')!r})")
        missing = sorted(set(cls._ARRAYS) - arrays.keys())
        if missing:
            raise ValueError(f"learned: {source} lacks tensors {missing}")
        try:
            return cls(
                categories=tuple(Category(c) for c in meta.pop("categories").split(",")),
                rule_categories=tuple(Category(c) for c in meta.pop("rule_categories").split(",")),
                vocabulary=tuple(json.loads(meta.pop("vocabulary"))),
                char_vocabulary=tuple(json.loads(meta.pop("char_vocabulary", "[]"))),
                metadata={k: v for k, v in meta.items() if k != "format"},
                **{k: arrays[k] for k in cls._ARRAYS},
                **{k: arrays[k] for k in cls._OPTIONAL if k in arrays},
            )
        except (KeyError, ValueError) as e:
            raise ValueError(f"learned: {source}: {e}") from e


def _read(model: str | Path) -> tuple[str, bytes]:
    if str(model) == BUNDLED:
        ref = resources.files("safety_lora.classifiers").joinpath("rules/prompt_model.safetensors")
        source = "bundled rules/prompt_model.safetensors"
        try:
            return source, ref.read_bytes()
        except OSError as e:
            raise ValueError(f"learned: cannot read {source}: {e}") from e
    try:
        return str(model), Path(model).read_bytes()
    except OSError as e:
        raise ValueError(f"learned: cannot read model file {str(model)!r}: {e}") from e


_LOADED: dict[tuple[str, str], PromptModel] = {}


def load_model(model: str | Path) -> tuple[PromptModel, str]:
    """The parsed model and its bytes' sha256 (parsed once per distinct file content)."""
    source, data = _read(model)
    digest = hashlib.sha256(data).hexdigest()
    key = (source, digest)
    if key not in _LOADED:
        _LOADED.clear()  # one model at a time is the common case; never stale
        _LOADED[key] = PromptModel.from_bytes(data, source=source)
    return _LOADED[key], digest


def tokenizer() -> Any:
    """MiniLM's wordpiece tokenizer, shipped in the package (the model's ids)."""
    from tokenizers import Tokenizer

    ref = resources.files("safety_lora.classifiers").joinpath("rules/minilm_tokenizer.json")
    return Tokenizer.from_str(ref.read_text(encoding="utf-8"))


def _merged(first: PromptScores, second: PromptScores) -> PromptScores:
    """Two rule verdicts on one prompt: each category's higher score, both sets of matches."""
    scores = {c: max(first.scores.get(c, 0.0), second.scores.get(c, 0.0))
              for c in first.scores.keys() | second.scores.keys()}  # fmt: skip
    matches = tuple(dict.fromkeys((*first.matches, *second.matches)))
    return PromptScores(scores=scores, matches=matches, normalized=first.normalized)


class LearnedPromptClassifier:
    """Calibrated per-category scores from the shipped prompt model (module docstring)."""

    def __init__(
        self,
        *,
        model: str | Path | PromptModel = BUNDLED,
        extra_terms: Mapping[Category, Sequence[str]] | None = None,
        passthrough: float = 1.0,
        cache_size: int = 4096,
        name: str = "learned",
    ) -> None:
        if isinstance(model, PromptModel):  # in memory (cross-validation folds)
            self.model, digest = model, hashlib.sha256(model.to_bytes()).hexdigest()
        else:
            self.model, digest = load_model(model)
        self.rules = PromptRulesClassifier(extra_terms=extra_terms)
        self.name = name
        both = hashlib.sha256((digest + self.rules.fingerprint).encode()).hexdigest()
        self.fingerprint = f"learned:{both[:16]}"
        self._tokenizer = tokenizer()
        # split and misspelt words are read back as the model's words (the commoner first)
        # or as the rules' single-word terms ("nu de" -> "nude")
        known = {w: float(self.model.idf[i]) for i, w in enumerate(self.model.vocabulary)}
        rarest = max(known.values(), default=0.0) + 1.0
        self.repair = WordRepair(
            {
                **dict.fromkeys(self.rules.words, rarest),
                **{w: f for w, f in known.items() if w.isalpha()},
            }
        )
        self._passthrough = passthrough
        self._cache: OrderedDict[str, PromptScores] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def classify(self, prompts: Sequence[str]) -> list[PromptScores]:
        """Calibrated model scores, raised to a rule score of ``passthrough`` or more (explicit
        terms: 1.0); ``minors`` and ``matches`` come from the rules. Cached; thread-safe."""
        out: list[PromptScores | None] = []
        todo: list[int] = []
        with self._lock:
            for i, prompt in enumerate(prompts):
                hit = self._cache.get(prompt)
                if hit is not None:
                    self._cache.move_to_end(prompt)
                else:
                    todo.append(i)
                out.append(hit)
        if todo:
            fresh = self._score([prompts[i] for i in todo])
            with self._lock:
                for i, scores in zip(todo, fresh, strict=True):
                    out[i] = scores
                    self._cache[prompts[i]] = scores
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return [s for s in out if s is not None]

    def features(self, prompts: Sequence[str]) -> list[tuple[Any, ...]]:
        """Per prompt: (rule verdict, n-gram features, static vector, rule scores), as the model
        reads them: from the repaired text, the rules from both texts."""
        ruled = self.rules.classify(prompts)
        m = self.model
        texts = [self.repair(r.normalized) for r in ruled]
        # the rules read the repaired text too ("boomstick" is a gun to them as well)
        changed = [
            i for i, (r, t) in enumerate(zip(ruled, texts, strict=True)) if t != r.normalized
        ]
        for i, again in zip(changed, self.rules.classify([texts[i] for i in changed]), strict=True):
            ruled[i] = _merged(ruled[i], again)
        encoded = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [
            (
                r,
                m.word_features(text),
                m.static_vector(e.ids),
                np.array([r.scores.get(c, 0.0) for c in m.rule_categories]),
            )
            for r, text, e in zip(ruled, texts, encoded, strict=True)
        ]

    def _score(self, prompts: Sequence[str]) -> list[PromptScores]:
        m = self.model
        out = []
        for ruled, words, static, rules in self.features(prompts):
            learned = m.calibrated(m.raw(words, static, rules))
            scores = dict(ruled.scores)  # categories without a head (minors) from the rules
            # where the rules see a child, their sexual score counts in full: the minors +
            # sexual rule never rests on the model alone (emoji, other languages)
            child = ruled.scores.get(Category.MINORS, 0.0) >= MINORS_AT
            for category, value in zip(m.categories, learned, strict=True):
                rule = ruled.scores.get(category, 0.0)
                floor = self._passthrough if not (child and category is Category.SEXUAL) else 0.0
                scores[category] = max(float(value), rule if rule >= floor else 0.0)
            out.append(
                PromptScores(scores=scores, matches=ruled.matches, normalized=ruled.normalized)
            )
        return out


class LearnedPromptConfig(ClassifierConfig):
    """The shipped prompt model (``bundled``) or a model file, plus user ``extra_terms``.

    Rule scores of ``passthrough`` or more (explicit terms, 1.0) override the model;
    ``cache_size`` recent prompts are remembered.
    """

    HOW = "a model trained for it, or `extra_terms`"
    kind: Literal["learned"] = "learned"
    model: str = BUNDLED
    extra_terms: dict[Category, Terms] = Field(default_factory=dict)
    passthrough: StrictFloat = Field(default=1.0, gt=0.0, le=1.0)
    cache_size: StrictInt = Field(default=4096, ge=0, le=1_000_000)

    @field_validator("model")
    @classmethod
    def _relative_to_policy(cls, value: str, info: ValidationInfo) -> str:
        return resolve_local(value, info)

    @field_validator("extra_terms")
    @classmethod
    def _terms_match_something(cls, value: dict[Category, list[str]]) -> dict[Category, list[str]]:
        return check_extra_terms(value)

    def categories(self) -> frozenset[Category]:
        """The model file's categories plus the bundled rules' and ``extra_terms``' (``minors``
        comes from the rules); reads the model file."""
        learned = load_model(self.model)[0].categories
        rules = PromptRulesConfig(extra_terms=self.extra_terms).categories()
        return frozenset(learned) | rules

    def build(self) -> LearnedPromptClassifier:
        """A :class:`LearnedPromptClassifier` on ``model`` (parsed once per file content) with the
        bundled rules plus ``extra_terms``."""
        return LearnedPromptClassifier(
            model=self.model,
            extra_terms=self.extra_terms,
            passthrough=self.passthrough,
            cache_size=self.cache_size,
        )
