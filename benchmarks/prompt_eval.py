"""Prompt-classifier quality on the shared dev sets: TPR/FPR per category and ROC-AUC.

Run: ``.venv/bin/python benchmarks/prompt_eval.py [--threshold 0.5]``

A prompt is *flagged* when any category except ``minors`` (which alone is not unsafe)
scores >= threshold, or when sexual and minors both do. Reported:

- FPR on COCO captions and on I2P prompts with inappropriate_percentage == 0;
- TPR on I2P prompts with inappropriate_percentage >= 50, overall and per I2P category
  (``any``: flagged at all; ``own``: that category's score >= threshold);
- TPR on I2P ``sexual`` prompts with nudity_percentage >= 50;
- ROC-AUC of the max category score, I2P >= 50 vs I2P == 0 (same style, other content).

Rows are also split by case_number parity: the rule vocabulary was reviewed only against
even case numbers, so the odd half is a held-out check on overfitting.

The learned ``minilm`` classifier and the combination max(rules, minilm) are scored by 5-fold
cross-validation: each fold's head (calibration included) is trained without that fold's rows
(see ``train_minilm_head.py``), so no number comes from a head's own training rows.
``--no-minilm`` skips them. A final table compares rules / minilm / combined.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

from _data import I2P_CATEGORIES, I2PRow, read_coco, read_i2p
from rich.console import Console
from rich.table import Table

Scorer = Callable[[Sequence[str]], list[dict[str, float]]]
UNSAFE = [c for c in I2P_CATEGORIES.values()]


def risk(scores: dict[str, float]) -> float:
    """The max category score, minors counting only together with sexual."""
    base = max((scores.get(c, 0.0) for c in UNSAFE), default=0.0)
    return max(base, min(scores.get("sexual", 0.0), scores.get("minors", 0.0)))


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Mann-Whitney ROC-AUC with ties counted half."""
    ranked = sorted([(s, 1) for s in pos] + [(s, 0) for s in neg])
    rank_sum, i = 0.0, 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + j + 1) / 2  # average 1-based rank of the tie block
        rank_sum += mid * sum(lab for _, lab in ranked[i:j])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def rate(flags: Sequence[bool]) -> str:
    return f"{100 * sum(flags) / max(1, len(flags)):5.1f}% ({sum(flags)}/{len(flags)})"


def report(
    name: str,
    i2p: list[I2PRow],
    i2p_scores: list[dict[str, float]],
    coco_scores: list[dict[str, float]],
    threshold: float,
    console: Console,
) -> None:
    t = threshold
    table = Table(title=f"{name} @ threshold {t}")
    for col in ("set", "all", "even (reviewed)", "odd (held out)"):
        table.add_column(col)

    def row(
        label: str, keep: Callable[[I2PRow], bool], hit: Callable[[dict[str, float]], bool]
    ) -> None:
        cells = []
        for part in (None, 0, 1):
            flags = [
                hit(s)
                for r, s in zip(i2p, i2p_scores, strict=True)
                if keep(r) and (part is None or r.case_number % 2 == part)
            ]
            cells.append(rate(flags))
        table.add_row(label, *cells)

    def flagged(s: dict[str, float]) -> bool:
        return risk(s) >= t

    def labelled(cat: str) -> Callable[[I2PRow], bool]:
        return lambda r: r.inappropriate >= 50 and cat in r.categories

    def own(cat: str) -> Callable[[dict[str, float]], bool]:
        return lambda s: s.get(cat, 0.0) >= t

    coco_flags = [flagged(s) for s in coco_scores]
    table.add_row("FPR coco", rate(coco_flags), "", "")
    row("FPR i2p inapp==0", lambda r: r.inappropriate == 0, flagged)
    row("TPR i2p inapp>=50", lambda r: r.inappropriate >= 50, flagged)
    row("TPR sexual & nudity>=50", lambda r: "sexual" in r.categories and r.nudity >= 50, flagged)
    for cat in UNSAFE:
        row(f"TPR {cat} (any)", labelled(cat), flagged)
        row(f"TPR {cat} (own)", labelled(cat), own(cat))
    aucs = []
    for part in (None, 0, 1):
        sel = [
            (r, s)
            for r, s in zip(i2p, i2p_scores, strict=True)
            if part is None or r.case_number % 2 == part
        ]
        pos = [risk(s) for r, s in sel if r.inappropriate >= 50]
        neg = [risk(s) for r, s in sel if r.inappropriate == 0]
        aucs.append(f"{auc(pos, neg):.3f}")
    table.add_row("AUC i2p >=50 vs ==0", *aucs)
    console.print(table)


def rules_scorer() -> Scorer:
    from safety_lora.classifiers.prompt_rules import PromptRulesConfig

    clf = PromptRulesConfig().build()

    def score(prompts: Sequence[str]) -> list[dict[str, float]]:
        return [{c.value: v for c, v in r.scores.items()} for r in clf.classify(prompts)]

    return score


def minilm_cv_scores(
    i2p: list[I2PRow], coco: list[str], cache: Path, k: int = 5
) -> list[dict[str, float]]:
    """Out-of-fold scores for ``coco + i2p``: each fold scored by a head trained without it."""
    import numpy as np
    import torch
    from train_minilm_head import dev_set, embed_dev_sets, fit_head, folds

    torch.set_num_threads(1)
    d = dev_set(i2p, coco, embed_dev_sets(i2p, coco, cache))
    out = np.zeros((len(d.x), len(I2P_CATEGORIES)))
    head = None
    for train, test in folds(d, np.arange(len(d.x)), k):
        head = fit_head(d, train)
        out[test] = head.scores(d.x[test])
    assert head is not None
    cats = [c.value for c in head.categories]
    return [dict(zip(cats, map(float, row), strict=True)) for row in out]


def summary(
    results: dict[str, tuple[list[dict[str, float]], list[dict[str, float]]]],
    i2p: list[I2PRow],
    threshold: float,
    console: Console,
) -> None:
    """One column per classifier: the headline rates and AUC, all rows (no parity split)."""
    table = Table(title=f"comparison @ threshold {threshold} (minilm: 5-fold CV)")
    table.add_column("set")
    for name in results:
        table.add_column(name)

    def i2p_rate(keep: Callable[[I2PRow], bool], scores: list[dict[str, float]]) -> str:
        return rate([risk(s) >= threshold for r, s in zip(i2p, scores, strict=True) if keep(r)])

    rows: list[tuple[str, Callable[[list[dict[str, float]], list[dict[str, float]]], str]]] = [
        ("FPR coco", lambda i, c: rate([risk(s) >= threshold for s in c])),
        ("FPR i2p inapp==0", lambda i, c: i2p_rate(lambda r: r.inappropriate == 0, i)),
        ("TPR i2p inapp>=50", lambda i, c: i2p_rate(lambda r: r.inappropriate >= 50, i)),
        (
            "TPR sexual & nudity>=50",
            lambda i, c: i2p_rate(lambda r: "sexual" in r.categories and r.nudity >= 50, i),
        ),
    ]

    def in_category(cat: str) -> Callable[[list[dict[str, float]], list[dict[str, float]]], str]:
        return lambda i, c: i2p_rate(lambda r: r.inappropriate >= 50 and cat in r.categories, i)

    rows += [(f"TPR {cat} (any)", in_category(cat)) for cat in UNSAFE]

    def auc_cell(i: list[dict[str, float]], c: list[dict[str, float]]) -> str:
        pos = [risk(s) for r, s in zip(i2p, i, strict=True) if r.inappropriate >= 50]
        neg = [risk(s) for r, s in zip(i2p, i, strict=True) if r.inappropriate == 0]
        return f"{auc(pos, neg):.3f}"

    rows.append(("AUC i2p >=50 vs ==0", auc_cell))
    for label, cell in rows:
        table.add_row(label, *(cell(i, c) for i, c in results.values()))
    console.print(table)


def combine(a: list[dict[str, float]], b: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-category max of two classifiers' scores."""
    return [
        {k: max(x.get(k, 0.0), y.get(k, 0.0)) for k in x.keys() | y.keys()}
        for x, y in zip(a, b, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--no-minilm", action="store_true", help="only the rules")
    parser.add_argument("--cache", type=Path, default=Path("build/minilm_embeddings.npz"))
    args = parser.parse_args()
    console = Console()
    i2p, coco = read_i2p(), read_coco()
    score = rules_scorer()
    rules = (score([r.prompt for r in i2p]), score(coco))
    report("prompt_rules (bundled)", i2p, *rules, args.threshold, console)
    if args.no_minilm:
        return
    cv = minilm_cv_scores(i2p, coco, args.cache)
    minilm = (cv[len(coco) :], cv[: len(coco)])
    both = (combine(rules[0], minilm[0]), combine(rules[1], minilm[1]))
    report("minilm (5-fold CV)", i2p, *minilm, args.threshold, console)
    report("max(rules, minilm) (5-fold CV)", i2p, *both, args.threshold, console)
    summary({"rules": rules, "minilm": minilm, "rules+minilm": both}, i2p, args.threshold, console)


if __name__ == "__main__":
    main()
