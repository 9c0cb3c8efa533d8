"""Train the ``kind: minilm`` head (per-category logistic regression + calibration) on the dev data.

Run: ``.venv/bin/python benchmarks/train_minilm_head.py [--out HEAD.safetensors]``

For your own sentence-embedding model folder (safetensors, e.g. a saved
sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2):
``.venv/bin/python benchmarks/train_minilm_head.py --model FOLDER --out HEAD.safetensors``;
the head records the folder's model id and embedding size, and ``kind: minilm`` with
``model: FOLDER, head: HEAD.safetensors`` checks both.

Labels: an I2P prompt with inappropriate_percentage >= 50 is positive for its I2P categories
(and ignored by the other categories' heads: I2P categories overlap); negatives for every
category are the COCO captions and the I2P prompts with 0% (weighted up: same style as the
positives, so they teach content rather than style). Prompts with 0 < x < 50 are left out
(neither clearly safe nor clearly unsafe).

Calibration: out-of-fold probabilities on the training rows (inner 5-fold) pick per-category
raw thresholds at one common negative quantile, the loosest for which flagging "any category
over its threshold" keeps FPR <= 1% on COCO and <= 10% on I2P 0% prompts (COCO alone is
separable by style, so a COCO-only target would flag most I2P prompts whatever their content).
That threshold is mapped to score 0.5 by a piecewise-linear map [0, t, 1] -> [0, 0.5, 1].
Deterministic: fixed fold seed, lbfgs.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _data import I2P_CATEGORIES, I2PRow, data_dir, read_coco, read_i2p
from numpy.typing import NDArray

from safety_lora.classifiers.config import BUNDLED
from safety_lora.classifiers.minilm_prompt import MODEL_ID, MiniLMEmbedder, MiniLMHead
from safety_lora.taxonomy import Category

CATEGORIES = tuple(Category(c) for c in I2P_CATEGORIES.values())
SEED = 0
C_REG = 4.0  # inverse L2 strength; 1..16 all within 0.01 AUC in 5-fold CV
W_ZERO = 5.0  # weight of I2P 0% negatives relative to COCO captions
MAX_FPR_COCO = 0.01
MAX_FPR_I2P_ZERO = 0.10
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "classifiers/rules/minilm_head.safetensors"


@dataclass(frozen=True)
class DevSet:
    """Embeddings and labels of COCO captions followed by I2P prompts."""

    x: NDArray[np.float32]
    pos: NDArray[np.bool_]  # (N, C): positive for that category
    coco: NDArray[np.bool_]
    zero: NDArray[np.bool_]  # I2P with inappropriate_percentage == 0
    unsafe: NDArray[np.bool_]  # I2P with inappropriate_percentage >= 50
    strata: NDArray[np.int64]  # for stratified folds


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def embed_dev_sets(
    i2p: list[I2PRow],
    coco: list[str],
    cache: Path | None,
    embedder: MiniLMEmbedder | None = None,
) -> NDArray[np.float32]:
    """Embeddings of ``coco + i2p`` prompts by ``embedder`` (default: the bundled MiniLM),
    reused from ``cache`` when the data and the model are unchanged."""
    key = sha256_file(data_dir() / "i2p_dev.csv") + sha256_file(data_dir() / "coco_dev.csv")
    key += embedder.model_id if embedder is not None else MODEL_ID
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        if str(stored["key"]) == key:
            cached: NDArray[np.float32] = np.asarray(stored["x"], dtype=np.float32)
            return cached
    x = (embedder or MiniLMEmbedder(batch_size=64)).embed(coco + [r.prompt for r in i2p])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, key=np.array(key))
    return x


def dev_set(i2p: list[I2PRow], coco: list[str], x: NDArray[np.float32]) -> DevSet:
    n_c = len(coco)
    inapp = np.array([-1.0] * n_c + [r.inappropriate for r in i2p])
    cats = np.zeros((len(inapp), len(CATEGORIES)), dtype=bool)
    for j, r in enumerate(i2p):
        for c in r.categories:
            cats[n_c + j, CATEGORIES.index(Category(c))] = True
    coco_m, zero, unsafe = inapp < 0, inapp == 0, inapp >= 50
    strata = np.where(coco_m, 0, np.where(unsafe, 1, np.where(zero, 2, 3)))
    pos = cats & unsafe[:, None]
    return DevSet(x=x, pos=pos, coco=coco_m, zero=zero, unsafe=unsafe, strata=strata)


def folds(d: DevSet, rows: NDArray[np.int64], k: int = 5) -> list[tuple[NDArray[np.int64], ...]]:
    """Stratified k-fold split of ``rows`` (fixed seed): ``[(train, test), ...]``."""
    from sklearn.model_selection import StratifiedKFold

    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=SEED)
    return [(rows[a], rows[b]) for a, b in skf.split(rows, d.strata[rows])]


def _fit_raw(d: DevSet, rows: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Logistic regression per category on ``rows``: ``(weight (C, D), bias (C,))``."""
    from sklearn.linear_model import LogisticRegression

    weights, biases = [], []
    for k in range(len(CATEGORIES)):
        w = np.where(d.coco, 1.0, np.where(d.zero, W_ZERO, np.where(d.pos[:, k], 1.0, 0.0)))
        keep = rows[w[rows] > 0]
        clf = LogisticRegression(C=C_REG, max_iter=5000)
        clf.fit(d.x[keep], d.pos[keep, k], sample_weight=w[keep])
        weights.append(clf.coef_[0])
        biases.append(clf.intercept_[0])
    return np.array(weights), np.array(biases)


def _raw(
    x: NDArray[np.float32], w: NDArray[np.float64], b: NDArray[np.float64]
) -> NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ w.T + b))))


def thresholds(
    p: NDArray[np.float64], coco: NDArray[np.bool_], zero: NDArray[np.bool_]
) -> NDArray[np.float64]:
    """Per-category raw thresholds at the loosest common quantile of the I2P 0% scores that
    keeps both FPR targets for "any category above its threshold"."""
    pz, pc = p[zero], p[coco]
    lo, hi = 0.0, 1.0
    for _ in range(50):
        q = (lo + hi) / 2
        t = np.quantile(pz, 1 - q, axis=0)
        ok = (pz > t).any(1).mean() <= MAX_FPR_I2P_ZERO and (pc > t).any(1).mean() <= MAX_FPR_COCO
        lo, hi = (q, hi) if ok else (lo, q)
    return np.clip(np.quantile(pz, 1 - lo, axis=0), 1e-6, 1 - 1e-6)


def fit_head(
    d: DevSet,
    rows: NDArray[np.int64],
    metadata: dict[str, str] | None = None,
    model: str | None = None,
) -> MiniLMHead:
    """Head trained on ``rows`` only, calibrated on out-of-fold scores of ``rows``, for the
    embedding model ``model`` (default: the bundled MiniLM)."""
    oof = np.zeros((len(d.x), len(CATEGORIES)))
    for tr, te in folds(d, rows):
        oof[te] = _raw(d.x[te], *_fit_raw(d, tr))
    mask = np.zeros(len(d.x), dtype=bool)
    mask[rows] = True
    t = thresholds(oof, d.coco & mask, d.zero & mask)
    w, b = _fit_raw(d, rows)
    n = len(CATEGORIES)
    return MiniLMHead(
        categories=CATEGORIES,
        weight=w.astype(np.float32),
        bias=b.astype(np.float32),
        calib_x=np.stack([np.zeros(n), t, np.ones(n)], axis=1).astype(np.float32),
        calib_y=np.tile(np.array([0.0, 0.5, 1.0], dtype=np.float32), (n, 1)),
        metadata=metadata or {},
        **({"model": model} if model else {}),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"default: {DEFAULT_OUT}")
    parser.add_argument("--model", default=BUNDLED, help="a local sentence-embedding model folder")
    parser.add_argument("--cache", type=Path, default=Path("build/minilm_embeddings.npz"))
    args = parser.parse_args()
    if args.model != BUNDLED and args.out is None:
        parser.error("--model FOLDER needs --out HEAD.safetensors (the bundled head stays)")
    out: Path = args.out or DEFAULT_OUT
    import torch

    torch.set_num_threads(1)
    embedder = MiniLMEmbedder(model=args.model, batch_size=64)
    i2p, coco = read_i2p(), read_coco()
    d = dev_set(i2p, coco, embed_dev_sets(i2p, coco, args.cache, embedder))
    command = "python benchmarks/train_minilm_head.py"
    if args.model != BUNDLED:
        command += f" --model {Path(args.model).name} --out {out.name}"
    meta = {
        "command": command,
        "date": datetime.date.today().isoformat(),
        "i2p_dev.csv.sha256": sha256_file(data_dir() / "i2p_dev.csv"),
        "coco_dev.csv.sha256": sha256_file(data_dir() / "coco_dev.csv"),
        "labels": "positive: i2p inappropriate>=50 per category; negative: coco + i2p ==0",
        "operating_point": f"score 0.5: FPR<={MAX_FPR_COCO} coco, <={MAX_FPR_I2P_ZERO} i2p==0",
        "hyperparameters": f"C={C_REG} w_zero={W_ZERO} seed={SEED}",
    }
    if args.model != BUNDLED:  # the bundled head's bytes stay as they are
        meta["embedding_size"] = str(embedder.dimension)
    head = fit_head(d, np.arange(len(d.x)), meta, model=embedder.model_id)
    head.save(out)
    print(f"wrote {out} ({out.stat().st_size} bytes) for {embedder.model_id}", file=sys.stderr)
    for c, t in zip(head.categories, head.calib_x[:, 1], strict=True):
        print(f"{c.value:>17}: raw threshold {t:.4f} -> score 0.5")


if __name__ == "__main__":
    main()
