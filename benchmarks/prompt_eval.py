"""Prompt-classifier quality on the shared dev sets: TPR/FPR per category and ROC-AUC.

Run: ``.venv/bin/python benchmarks/prompt_eval.py [--threshold 0.5] [--out build/prompt_eval]``
(``--results PATH`` / ``--no-results``: where the printed tables are recorded).

A prompt is *flagged* when any category except ``minors`` (which alone is not unsafe)
scores >= threshold, or when sexual and minors both do. Reported:

- FPR on COCO captions and on I2P prompts with inappropriate_percentage == 0;
- TPR on I2P prompts with inappropriate_percentage >= 50, overall and per I2P category
  (``any``: flagged at all; ``own``: that category's score >= threshold);
- TPR on I2P ``sexual`` prompts with nudity_percentage >= 50;
- ROC-AUC of the max category score, I2P >= 50 vs I2P == 0 (same style, other content).

Rows are also split by case_number parity: the rule vocabulary was reviewed only against
even case numbers, so the odd half is a held-out check on overfitting.

The ``learned`` classifier (the presets' default, ``train_prompt_model.py``) and the optional
``minilm`` head are scored by 5-fold cross-validation: each fold's model (calibration
included) is trained without that fold's rows, so no number comes from a model's own training
rows; the ``learned`` folds group I2P prompts by their last three words (prompt series share
a style suffix). ``--no-minilm`` skips the MiniLM head (slow: it embeds every prompt). Then:
a comparison table; the operating points of the learned model (TPR at 1% COCO FPR, FPR on
I2P 0% at each threshold); reliability per category (held-out calibrated score vs observed
rate, also drawn to ``OUT/reliability.png``); the presets' refuse / steer / allow shares on
each set; speed on one core.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path

from _data import I2P_CATEGORIES, I2PRow, read_coco, read_i2p
from _report import Report, add_arguments, first_paragraph
from rich.console import Console

NAME = "prompt_eval"
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
    rep: Report,
) -> None:
    t = threshold
    table = rep.table(
        f"{name} @ threshold {t}",
        ["set", "all", "even (reviewed)", "odd (held out)"],
        justify="left",
    )

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
    console.print(table.rich())


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
    rep: Report,
) -> None:
    """One column per classifier: the headline rates and AUC, all rows (no parity split)."""
    table = rep.table(
        f"comparison @ threshold {threshold} (learned, minilm: 5-fold CV)",
        ["set", *results],
        justify="left",
    )

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
    console.print(table.rich())


def combine(a: list[dict[str, float]], b: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per-category max of two classifiers' scores."""
    return [
        {k: max(x.get(k, 0.0), y.get(k, 0.0)) for k in x.keys() | y.keys()}
        for x, y in zip(a, b, strict=True)
    ]


def learned_cv_scores(i2p: list[I2PRow], coco: list[str]) -> list[dict[str, float]]:
    """Out-of-fold scores of the learned classifier for ``coco + i2p`` (grouped 5-fold)."""
    import numpy as np
    import train_prompt_model as train

    from safety_lora.classifiers.learned_prompt import LearnedPromptClassifier

    c = train.corpus(i2p, coco)
    table = train.projected(train.token_vectors())
    out: list[dict[str, float]] = [{} for _ in c.texts]
    for rows, test in train.folds(c, np.arange(len(c.texts))):
        classifier = LearnedPromptClassifier(model=train.fit_model(c, rows, table), cache_size=0)
        for i, result in zip(test, classifier.classify([c.texts[i] for i in test]), strict=True):
            out[i] = {k.value: v for k, v in result.scores.items()}
    return out


def operating_points(
    i2p: list[I2PRow], scores: tuple[list[dict[str, float]], list[dict[str, float]]],
    console: Console, rep: Report,
) -> None:  # fmt: skip
    """TPR / FPR of the learned model's max category score at thresholds, and at 1% COCO FPR."""
    pos = [risk(s) for r, s in zip(i2p, scores[0], strict=True) if r.inappropriate >= 50]
    zero = [risk(s) for r, s in zip(i2p, scores[0], strict=True) if r.inappropriate == 0]
    nude = [risk(s) for r, s in zip(i2p, scores[0], strict=True)
            if "sexual" in r.categories and r.nudity >= 50]  # fmt: skip
    coco = sorted(risk(s) for s in scores[1])
    at_1pct = coco[int(0.99 * len(coco))]
    table = rep.table(
        "learned (5-fold CV): operating points",
        ["threshold", "TPR i2p>=50", "TPR sexual&nudity>=50", "FPR i2p==0", "FPR coco"],
        justify="right",
    )
    for t in (at_1pct, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0):
        label = f"{t:.3f} (coco 1%)" if t == at_1pct else f"{t:.2f}"
        table.add_row(
            label,
            rate([s >= t for s in pos]),
            rate([s >= t for s in nude]),
            rate([s >= t for s in zero]),
            rate([s >= t for s in coco]),
        )
    console.print(table.rich())


def reliability(
    i2p: list[I2PRow], scores: tuple[list[dict[str, float]], list[dict[str, float]]],
    out: Path, console: Console, rep: Report,
) -> None:  # fmt: skip
    """Held-out calibrated score vs observed positive rate, per category (table and plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01]
    table = rep.table(
        "learned (5-fold CV): reliability, mean score -> observed rate (n)",
        ["category", *(f"{lo:.1f}-{min(hi, 1.0):.1f}" for lo, hi in itertools.pairwise(edges))],
    )
    figure, axes = plt.subplots(figsize=(6, 6))
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
    for cat in UNSAFE:
        # the rows this category's head is calibrated on: COCO, I2P 0%, I2P >=50 of this category
        pairs = [(s.get(cat, 0.0), False) for s in scores[1]]
        pairs += [
            (s.get(cat, 0.0), r.inappropriate >= 50)
            for r, s in zip(i2p, scores[0], strict=True)
            if r.inappropriate == 0 or (r.inappropriate >= 50 and cat in r.categories)
        ]
        cells, xs, ys = [], [], []
        for lo, hi in itertools.pairwise(edges):
            inside = [(p, y) for p, y in pairs if lo <= p < hi]
            if not inside:
                cells.append("-")
                continue
            mean = sum(p for p, _ in inside) / len(inside)
            seen = sum(y for _, y in inside) / len(inside)
            cells.append(f"{mean:.2f}->{seen:.2f} ({len(inside)})")
            xs.append(mean)
            ys.append(seen)
        table.add_row(cat, *cells)
        axes.plot(xs, ys, marker="o", label=cat)
    axes.set_xlabel("held-out calibrated score")
    axes.set_ylabel("observed share unsafe in the category")
    axes.set_title("learned prompt classifier: reliability (5-fold CV)")
    axes.legend(fontsize=8)
    out.mkdir(parents=True, exist_ok=True)
    figure.savefig(out / "reliability.png", dpi=120, bbox_inches="tight")
    console.print(table.rich())
    console.print(f"reliability plot: {out / 'reliability.png'}")


def preset_shares(
    i2p: list[I2PRow], scores: tuple[list[dict[str, float]], list[dict[str, float]]],
    console: Console, rep: Report,
) -> None:  # fmt: skip
    """Each preset's refuse / steer / allow shares from the held-out learned scores."""
    from safety_lora.classifiers.base import PromptScores
    from safety_lora.policies import Policy, PolicyEngine
    from safety_lora.taxonomy import Category

    sets = {
        "coco": scores[1],
        "i2p ==0": [s for r, s in zip(i2p, scores[0], strict=True) if r.inappropriate == 0],
        "i2p >=50": [s for r, s in zip(i2p, scores[0], strict=True) if r.inappropriate >= 50],
    }
    table = rep.table(
        "presets on held-out learned scores: refuse / steer / allow", ["preset", *sets]
    )

    class Fixed:  # replays the held-out scores through the preset's own engine
        name, fingerprint = "learned (cv)", "cv"

        def __init__(self) -> None:
            self.next: dict[str, float] = {}

        def classify(self, prompts: Sequence[str]) -> list[PromptScores]:
            return [PromptScores(scores={Category(k): v for k, v in self.next.items()})]

    for preset in ("strict", "balanced", "permissive"):
        engine = PolicyEngine(Policy.preset(preset))
        fixed = Fixed()
        engine.prompt_classifiers = [fixed]
        cells = []
        for values in sets.values():
            counts = {"refuse": 0, "steer": 0, "allow": 0}
            for s in values:
                fixed.next = s
                counts[engine.check_prompt("x").action.value] += 1
            n = max(1, len(values))
            cells.append(" / ".join(f"{100 * counts[a] / n:.1f}%" for a in counts))
        table.add_row(preset, *cells)
    console.print(table.rich())


def speed(prompts: Sequence[str], console: Console, rep: Report) -> None:
    """Prompts per second on one core: rules, learned batched, learned one by one, cached."""
    import statistics
    import time

    import torch

    from safety_lora.classifiers.learned_prompt import LearnedPromptConfig
    from safety_lora.classifiers.prompt_rules import PromptRulesConfig

    torch.set_num_threads(1)
    rules = PromptRulesConfig().build()
    learned = LearnedPromptConfig(cache_size=0).build()
    cached = LearnedPromptConfig().build()

    def best(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return n / min(times)

    single = []
    for p in prompts[:500]:
        began = time.perf_counter()
        learned.classify([p])
        single.append(time.perf_counter() - began)
    recent = list(prompts[:2000])  # within the cache's 4,096 prompts
    cached.classify(recent)
    table = rep.table(f"speed on one core ({len(prompts)} prompts)", ["classifier", "prompts/s"])
    table.add_row("prompt_rules", f"{best(lambda: rules.classify(prompts), len(prompts), 15):,.0f}")
    table.add_row(
        "learned, batched", f"{best(lambda: learned.classify(prompts), len(prompts)):,.0f}"
    )
    table.add_row("learned, cached", f"{best(lambda: cached.classify(recent), len(recent)):,.0f}")
    table.add_row(
        "learned, one prompt",
        f"p50 {1e3 * statistics.median(single):.2f} ms, p99 "
        f"{1e3 * sorted(single)[int(0.99 * len(single))]:.2f} ms",
    )
    console.print(table.rich())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--no-minilm", action="store_true", help="skip the MiniLM head")
    parser.add_argument("--cache", type=Path, default=Path("build/minilm_embeddings.npz"))
    parser.add_argument("--out", type=Path, default=Path("build/prompt_eval"))
    add_arguments(parser, NAME)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # one core, as the speed table says; BLAS threads only fight
    rep = Report(NAME, "Prompt classifiers: quality and speed", first_paragraph(__doc__))
    console = Console(width=160)
    i2p, coco = read_i2p(), read_coco()
    score = rules_scorer()
    rules = (score([r.prompt for r in i2p]), score(coco))
    report("prompt_rules (bundled)", i2p, *rules, args.threshold, console, rep)
    cv = learned_cv_scores(i2p, coco)
    learned = (cv[len(coco) :], cv[: len(coco)])
    report("learned (5-fold CV)", i2p, *learned, args.threshold, console, rep)
    results = {"rules": rules, "learned": learned}
    results["max(rules, learned)"] = (combine(rules[0], learned[0]), combine(rules[1], learned[1]))
    if not args.no_minilm:
        mcv = minilm_cv_scores(i2p, coco, args.cache)
        minilm = (mcv[len(coco) :], mcv[: len(coco)])
        results["minilm"] = minilm
        results["max(rules, minilm)"] = (combine(rules[0], minilm[0]), combine(rules[1], minilm[1]))
    summary(results, i2p, args.threshold, console, rep)
    operating_points(i2p, learned, console, rep)
    reliability(i2p, learned, args.out, console, rep)
    preset_shares(i2p, learned, console, rep)
    speed(coco + [r.prompt for r in i2p], console, rep)
    rep.save(args)


if __name__ == "__main__":
    main()
