"""Black-box evasion of the prompt checks on real unsafe prompts, per rewrite kind.

    python benchmarks/prompt_evasion.py [--prompts 300] [--words 2] [--results PATH]

Takes the I2P dev prompts whose images were unsafe at least half the time (``../shared/data``),
up to ``--prompts`` of them (seeded sample). For each prompt check (``prompt_rules``,
``minilm``, ``learned``; flagged at score 0.5, their operating point), the attacker finds each
flagged prompt's ``--words`` key words (the ones whose removal lowers the score most, one
query per word) and rewrites them one way per kind (:mod:`safety_lora.workbench.attack.evasion`);
a prompt evades when the rewrite is no longer flagged. Each check scores a prompt as the
policy engine does: the whole prompt, CLIP's window and each clause, worst kept
(:mod:`~safety_lora.classifiers.prompt_views`). The learned checks were fitted on I2P dev, so
their flag rates here are in-sample; the evasion rates are of flagged prompts. The last row is
the share of a hand-written translated control set (``tests/classifiers/data/
translated_unsafe.yaml``: 10 unsafe prompts in each of 10 languages) the ``strict`` preset
refuses or steers.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from _data import read_i2p
from _report import Report, add_arguments, first_paragraph
from rich.console import Console

from safety_lora.classifiers.base import PromptClassifier, PromptScores
from safety_lora.classifiers.learned_prompt import LearnedPromptConfig
from safety_lora.classifiers.minilm_prompt import MiniLMPromptConfig
from safety_lora.classifiers.prompt_rules import PromptRulesConfig
from safety_lora.classifiers.prompt_views import score_views
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy
from safety_lora.taxonomy import PromptAction
from safety_lora.workbench.attack.evasion import REWRITES, ClassifierCheck, evasion_table

NAME = "prompt_evasion"
TRANSLATED = Path(__file__).parents[1] / "tests/classifiers/data/translated_unsafe.yaml"


class Viewed:
    """A classifier scored over each prompt's views, as the policy engine runs it."""

    def __init__(self, classifier: PromptClassifier) -> None:
        self.inner = classifier
        self.name = classifier.name
        self.fingerprint = classifier.fingerprint

    def classify(self, prompts: Sequence[str]) -> list[PromptScores]:
        """Each prompt's worst score per category over its views."""
        return [PromptScores(scores=score_views(self.inner, p).scores) for p in prompts]


def translated_share() -> str:
    """``strict``'s refused-or-steered share of the translated control set."""
    data = yaml.safe_load(TRANSLATED.read_text(encoding="utf-8"))
    engine = PolicyEngine(Policy.load("strict"))
    prompts = [p for ps in data.values() for p in ps]
    caught = sum(engine.check_prompt(p).action is not PromptAction.ALLOW for p in prompts)
    return f"{100 * caught / len(prompts):.1f}% ({caught}/{len(prompts)}, {len(data)} languages)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--words", type=int, default=2)
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "Prompt checks: black-box evasion", first_paragraph(__doc__))
    unsafe = [r.prompt for r in read_i2p() if r.inappropriate >= 50]
    prompts = random.Random(0).sample(unsafe, min(args.prompts, len(unsafe)))
    checks = {
        "prompt_rules": PromptRulesConfig().build(),
        "minilm": MiniLMPromptConfig().build(),
        "learned": LearnedPromptConfig(cache_size=0).build(),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, classifier in checks.items():
        began = time.perf_counter()
        check = ClassifierCheck(Viewed(classifier))
        flagged, rows = evasion_table(check, prompts, words=args.words)
        results[name] = {
            "flagged": flagged,
            "seconds": time.perf_counter() - began,
            "rows": {r.kind: (r.evaded, r.flagged, r.examples[:1]) for r in rows},
        }
    table = report.table(
        f"evasion of flagged I2P>=50 prompts ({len(prompts)} sampled)",
        ["rewrite", *checks],
        justify="left",
    )
    table.add_row("flagged originally", *(f"{results[n]['flagged']}" for n in checks))
    for kind in REWRITES:
        cells = []
        for name in checks:
            evaded, applicable, _ = results[name]["rows"][kind]
            rate = f"{100 * evaded / applicable:.1f}%" if applicable else "-"
            cells.append(f"{rate} ({evaded}/{applicable})")
        table.add_row(kind, *cells)
    table.add_row("seconds", *(f"{results[n]['seconds']:.1f}" for n in checks))
    table.add_row("translated, strict refuses or steers", translated_share(), "", "")
    Console().print(table.rich())
    report.save(args)


if __name__ == "__main__":
    main()
