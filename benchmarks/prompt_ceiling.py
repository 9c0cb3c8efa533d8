"""How far the prompt check's text features go on I2P: richer models, and the labels' noise.

Run: ``.venv/bin/python benchmarks/prompt_ceiling.py`` (the contextual row needs the ``minilm``
extra; ``--cache PATH`` reuses ``prompt_eval.py``'s embeddings; ``--results PATH`` /
``--no-results``).

On the grouped 5-fold split of ``prompt_eval.py``, each row is a model trained on four folds
and scored on the fifth, by its raw score (before calibration, which ``prompt_eval.py``
includes), as ROC-AUC of I2P prompts >= 50% unsafe against 0% ones and TPR on I2P >= 50% at
1% FPR on COCO:

- **shipped recipe**: ``train_prompt_model.py``'s content heads and gate, alone and with
  explicit rule terms passing through at 1.0 as the classifier does;
- **+ contextual MiniLM**: the same heads given all-MiniLM-L6-v2's sentence embedding as well
  (a transformer pass per prompt at run time);
- **trees**: gradient-boosted trees on the dense features (static vectors and rule scores),
  learning the unsafe share of I2P prompts, scaled by the shipped gate: does a nonlinear model
  find more?
- **repeatability of the labels**: I2P holds some prompts more than once, each judged on its
  own images; the mean unsafe share of a prompt's other copies ranks each copy labelled >= 50%
  or 0% (no model, no folds). A text-only scorer that knew each prompt's expected share could
  reach about this, so the labels' noise is not what bounds the rows above.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from _data import read_coco, read_i2p
from _report import Report, add_arguments, first_paragraph
from numpy.typing import NDArray
from prompt_eval import auc
from rich.console import Console

NAME = "prompt_ceiling"


def _row(label: str, risk: NDArray[np.float64], coco: NDArray[np.bool_],
         zero: NDArray[np.bool_], unsafe: NDArray[np.bool_]) -> list[str]:  # fmt: skip
    """AUC (unsafe vs zero) and TPR on unsafe at the COCO 99th percentile."""
    at = np.sort(risk[coco])[int(0.99 * coco.sum())]
    hits = risk[unsafe] >= at
    value = auc(list(risk[unsafe]), list(risk[zero]))
    return [label, f"{value:.3f}", f"{100 * hits.mean():.1f}% ({hits.sum()}/{hits.size})"]


def repeatability(prompts: list[str], shares: list[float]) -> tuple[float, int]:
    """AUC of the other copies' mean share for each repeated prompt's copy at >= 50% or 0%."""
    copies: dict[str, list[float]] = defaultdict(list)
    for prompt, share in zip(prompts, shares, strict=True):
        copies[" ".join(prompt.lower().split())].append(share)
    pos, neg = [], []
    for values in copies.values():
        for i, share in enumerate(values):
            others = values[:i] + values[i + 1 :]
            if others and (share >= 50 or share == 0):
                (pos if share >= 50 else neg).append(float(np.mean(others)))
    return auc(pos, neg), len(pos) + len(neg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("build/minilm_embeddings.npz"))
    add_arguments(parser, NAME)
    args = parser.parse_args()
    import torch
    import train_prompt_model as train
    from scipy.sparse import csr_matrix, hstack
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits
    from train_minilm_head import embed_dev_sets

    torch.set_num_threads(1)
    threadpool_limits(1)
    rep = Report(NAME, "Prompt check: how far text features go", first_paragraph(__doc__))
    console = Console(width=140)
    i2p, coco_texts = read_i2p(), read_coco()
    c = train.corpus(i2p, coco_texts)
    table = train.projected(train.token_vectors())
    embedded = csr_matrix(embed_dev_sets(i2p, coco_texts, args.cache))
    n, r = len(c.texts), len(train.RULE_CATEGORIES)
    everything = np.arange(n)
    shipped, through, contextual, trees = (np.zeros(n) for _ in range(4))
    for rows, test in train.folds(c, everything):
        model = train.unfitted(c, rows, table)
        x = train.features(model, c, everything)
        fit = train.fit(c, rows, x[rows])
        raw = fit.scores(x[test])
        shipped[test] = raw.max(1)
        explicit = x[test][:, -r:].toarray() >= 1.0  # rule scores of the model's categories
        through[test] = np.where(explicit, 1.0, raw).max(1)
        both = hstack([x, embedded]).tocsr()
        contextual[test] = train.fit(c, rows, both[rows]).scores(both[test]).max(1)
        dense = x[:, -(table.shape[1] + r) :].toarray()
        learn = rows[~c.coco[rows]]
        booster = HistGradientBoostingRegressor(
            max_iter=300, learning_rate=0.05, max_leaf_nodes=15, l2_regularization=1.0,
            random_state=train.SEED,
        ).fit(dense[learn], c.share[learn])  # fmt: skip
        gate = np.asarray(x[test] @ fit.gate_weight + fit.gate_bias)
        trees[test] = booster.predict(dense[test]) * (1 + np.exp(-gate)) ** -fit.gate_power
    zero, unsafe = c.zero, c.unsafe
    out = rep.table(
        "grouped 5-fold CV, raw scores (I2P >= 50% vs 0%; TPR at 1% COCO FPR)",
        ["model", "ROC-AUC", "TPR i2p>=50 @ coco 1%"],
    )
    for label, risk in (
        ("shipped recipe", shipped),
        ("shipped recipe, explicit terms pass through", through),
        ("shipped recipe + contextual MiniLM embedding", contextual),
        ("trees on the dense features, gated", trees),
    ):
        out.add_row(*_row(label, risk, c.coco, zero, unsafe))
    value, copies = repeatability([row.prompt for row in i2p], [row.inappropriate for row in i2p])
    out.add_row(f"repeatability of the labels ({copies} repeated copies)", f"{value:.3f}", "–")
    console.print(out.rich())
    rep.save(args)


if __name__ == "__main__":
    main()
