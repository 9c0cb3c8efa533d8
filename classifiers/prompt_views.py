"""The texts a prompt check scores for one prompt: the whole prompt, what each text encoder
reads, each clause and short runs of words, so benign padding cannot dilute unsafe words.

A prompt's *views* are the prompt itself; per text encoder of the wrapped pipeline, the window
it reads (CLIP: the first 77 tokens with BOS/EOS, T5: its max length) when the prompt is
longer; each clause (split on commas, ``and``, semicolons, line breaks, CJK commas; clauses of
fewer than :data:`MIN_WORDS` words join their neighbour, since a model scores lone words
poorly); and, for the minors + sexual rule only, runs of :data:`SPAN_WORDS` words every
:data:`SPAN_STRIDE` words. A check scores every view and keeps each category's worst score
(:func:`score_views`); the view that set a score is named by kind and character span, never by
its text (audit lines may leave the prompt out).

Without a pipeline (the moderation service, a guard alone) no tokenizer is known: CLIP's
77-token budget is approximated by counting words and punctuation marks as one token each
(:data:`CLIP_WORDS`). CLIP splits rare words further, so its real window may end earlier;
the clause and span views cover that part as well.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from safety_lora.classifiers.base import PromptClassifier
from safety_lora.taxonomy import Category

__all__ = [
    "CLIP_WORDS",
    "SPAN_STRIDE",
    "SPAN_WORDS",
    "TextWindow",
    "TokenWindow",
    "View",
    "ViewScores",
    "WordWindow",
    "prompt_views",
    "score_views",
    "span_views",
    "windows_from_pipeline",
]

#: Words per span view, and the step between spans (every run of up to
#: ``SPAN_WORDS - SPAN_STRIDE + 1`` words lies whole inside one span).
SPAN_WORDS = 8
SPAN_STRIDE = 4
#: Fewest words in a clause view (shorter clauses join their neighbour).
MIN_WORDS = 6
#: At most this many clause and span views each (longer prompts: adjacent ones merge).
MAX_VIEWS = 96
_CLAUSE_SPLIT = re.compile(r"[,;\n\r\u3001\u3002\uff0c\uff1b|]+|\s+and\s+|\s*&\s*", re.IGNORECASE)
_UNIT = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class View:
    """One text a check scores: ``kind`` (prompt, window NAME, clause, span), where it lies in
    the prompt (``start``/``end`` characters; a token window from its tokenizer: 0 and its
    length in tokens) and the text."""

    kind: str
    start: int
    end: int
    text: str

    @property
    def label(self) -> str:
        """How a decision names this view (no prompt text in it)."""
        if self.kind == "prompt":
            return "whole prompt"
        if self.kind.startswith("window"):
            return f"{self.kind} (what that text encoder reads)"
        return f"{self.kind} at characters {self.start}-{self.end}"


class TextWindow(Protocol):
    """What one text encoder reads of a prompt: None when it reads all of it."""

    @property
    def name(self) -> str:
        """How decisions name this window."""
        ...

    def window(self, prompt: str) -> str | None:
        """The part of ``prompt`` the encoder reads, or None when that is the whole prompt."""
        ...


@dataclass(frozen=True)
class WordWindow:
    """An encoder's window approximated without its tokenizer: the first ``units`` words and
    punctuation marks (CLIP: 75 besides BOS and EOS)."""

    name: str = "clip (approximated by words)"
    units: int = 75

    def window(self, prompt: str) -> str | None:
        """``prompt`` up to the end of its ``units``-th word or mark, or None when shorter."""
        for i, match in enumerate(_UNIT.finditer(prompt)):
            if i == self.units - 1:
                end = match.end()
                return prompt[:end] if prompt[end:].strip() else None
        return None


@dataclass(frozen=True)
class TokenWindow:
    """An encoder's window from its own (transformers) tokenizer: the first ``max_length``
    tokens, special tokens (BOS/EOS) included.

    A fast tokenizer is read through ``backend``, a private copy of its Rust tokenizer
    (:func:`windows_from_pipeline` makes it), and the window is the prompt's own text up to
    the end of its last token. The pipeline's tokenizer keeps padding/truncation as state:
    calling it here, outside the steering lock, once un-padded a concurrent generation's
    prompt, which then drew another image. Without a backend (a slow tokenizer, which keeps
    no such state) the tokens are decoded back to text.
    """

    name: str
    tokenizer: Any
    max_length: int
    backend: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def window(self, prompt: str) -> str | None:
        """The prompt as far as the encoder reads it, or None when the prompt fits."""
        budget = max(self.max_length - int(self.tokenizer.num_special_tokens_to_add()), 1)
        if self.backend is not None:
            with self.lock:
                encoding = self.backend.encode(prompt, add_special_tokens=False)
            if len(encoding.ids) <= budget:
                return None
            return prompt[: encoding.offsets[budget - 1][1]]
        ids = self.tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) <= budget:
            return None
        return str(self.tokenizer.decode(ids[:budget], skip_special_tokens=True))


def _private_backend(tokenizer: Any) -> Any:
    """A copy of a fast tokenizer's Rust tokenizer, without padding or truncation (None for a
    slow tokenizer)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


#: The window assumed when no pipeline said what its encoders read.
CLIP_WORDS = WordWindow()
#: Largest sensible model_max_length (T5 tokenizers report 1e30 when unset).
_MAX_TOKENS = 4096
#: T5's window when neither the tokenizer nor the pipeline gives one (Flux's default).
_T5_DEFAULT = 512


def windows_from_pipeline(pipe: Any) -> tuple[TextWindow, ...]:
    """One :class:`TokenWindow` per tokenizer of ``pipe`` (``tokenizer``, ``tokenizer_2``,
    ``tokenizer_3``: SD, SDXL, SD3, Flux), or :data:`CLIP_WORDS` when it has none."""
    import inspect

    from transformers import PreTrainedTokenizerBase

    try:
        params = inspect.signature(pipe).parameters if callable(pipe) else {}
    except (TypeError, ValueError):
        params = {}
    sequence = params.get("max_sequence_length")
    default = sequence.default if sequence is not None else None
    out: list[TextWindow] = []
    for attr in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipe, attr, None)
        if not isinstance(tok, PreTrainedTokenizerBase):
            continue
        length = int(getattr(tok, "model_max_length", 0) or 0)
        if not 0 < length <= _MAX_TOKENS:
            length = default if isinstance(default, int) and default > 0 else _T5_DEFAULT
        elif isinstance(default, int) and "T5" in type(tok).__name__:
            length = min(length, default)
        name = f"window {attr} ({type(tok).__name__}, {length} tokens)"
        out.append(TokenWindow(name, tok, length, _private_backend(tok)))
    return tuple(out) or (CLIP_WORDS,)


def _pieces(prompt: str, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in pattern.finditer(prompt):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(prompt)))
    return [(a, b) for a, b in spans if prompt[a:b].strip()]


def _at_least(prompt: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Clauses of fewer than :data:`MIN_WORDS` words joined to the next (the last to the one
    before): a lone word or two is no sentence a model was fitted on."""
    out: list[tuple[int, int]] = []
    start: int | None = None
    for a, b in spans:
        start = a if start is None else start
        if len(prompt[start:b].split()) >= MIN_WORDS:
            out.append((start, b))
            start = None
    if start is not None:
        if out:
            out[-1] = (out[-1][0], spans[-1][1])
        else:
            out.append((start, spans[-1][1]))
    return out


def _bounded(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """At most :data:`MAX_VIEWS` spans, adjacent ones merged."""
    if len(spans) <= MAX_VIEWS:
        return spans
    size = -(-len(spans) // MAX_VIEWS)
    return [
        (spans[i][0], spans[min(i + size, len(spans)) - 1][1]) for i in range(0, len(spans), size)
    ]


def prompt_views(prompt: str, windows: Sequence[TextWindow] = (CLIP_WORDS,)) -> list[View]:
    """The prompt's distinct views, the whole prompt first (module docstring)."""
    views = [View("prompt", 0, len(prompt), prompt)]
    seen = {prompt.strip()}

    def add(kind: str, start: int, end: int, text: str) -> None:
        if text.strip() and text.strip() not in seen:
            seen.add(text.strip())
            views.append(View(kind, start, end, text))

    for window in windows:
        text = window.window(prompt)
        if text is not None:
            add(f"window {window.name}" if not window.name.startswith("window") else window.name,
                0, len(text), text)  # fmt: skip
    clauses = _at_least(prompt, _pieces(prompt, _CLAUSE_SPLIT))
    if len(clauses) > 1:
        for a, b in _bounded(clauses):
            add("clause", a, b, prompt[a:b])
    return views


def span_views(prompt: str) -> list[View]:
    """Runs of :data:`SPAN_WORDS` words every :data:`SPAN_STRIDE` words (none in shorter
    prompts): read only for the hard rule (:func:`score_views`)."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(prompt)]
    if len(words) <= SPAN_WORDS:
        return []
    starts = range(0, len(words) - SPAN_WORDS + SPAN_STRIDE, SPAN_STRIDE)
    spans = [(words[i][0], words[min(i + SPAN_WORDS, len(words)) - 1][1]) for i in starts]
    return [View("span", a, b, prompt[a:b]) for a, b in _bounded(spans)]


@dataclass(frozen=True)
class ViewScores:
    """A classifier's worst score per category over a prompt's views, the views that set them
    (category -> :attr:`View.label`, only where it was not the whole prompt), and all matches."""

    scores: dict[Category, float]
    decided_by: dict[Category, str]
    matches: tuple[str, ...]


def score_views(
    classifier: PromptClassifier,
    prompt: str,
    windows: Sequence[TextWindow] = (CLIP_WORDS,),
    *,
    minors_at: float = 0.5,
) -> ViewScores:
    """Score the prompt's views with ``classifier`` in one batch and keep each category's
    worst score (ties go to the earlier view: the whole prompt first).

    When some view scores ``minors`` at ``minors_at`` or more, the span views are scored too
    and their ``sexual`` scores count: the minors + sexual rule reads the words next to the
    child words, however much benign text surrounds them (other categories skip spans, which
    would flag fragments of ordinary prompts)."""
    scores: dict[Category, float] = {}
    decided: dict[Category, str] = {}
    matches: dict[str, None] = {}

    def merge(views: Sequence[View], only: frozenset[Category] | None) -> None:
        results = classifier.classify([v.text for v in views])
        for view, result in zip(views, results, strict=True):
            for category, score in result.scores.items():
                if not 0.0 <= score <= 1.0:  # NaN too: a broken classifier is an error
                    raise ValueError(
                        f"{classifier.name}: {category.value} score {score!r} is not in [0, 1]"
                    )
                if only is not None and category not in only:
                    continue
                if category not in scores or score > scores[category]:
                    scores[category] = score
                    if view.kind == "prompt":
                        decided.pop(category, None)
                    else:
                        decided[category] = view.label
            if only is None:
                matches.update(dict.fromkeys(result.matches))

    merge(prompt_views(prompt, windows), None)
    if scores.get(Category.MINORS, 0.0) >= minors_at:
        spans = span_views(prompt)
        if spans:
            merge(spans, frozenset({Category.SEXUAL}))
    return ViewScores(scores, decided, tuple(matches))
