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
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    console = Console()
    i2p, coco = read_i2p(), read_coco()
    score = rules_scorer()
    report(
        "prompt_rules (bundled)",
        i2p,
        score([r.prompt for r in i2p]),
        score(coco),
        args.threshold,
        console,
    )


if __name__ == "__main__":
    main()
