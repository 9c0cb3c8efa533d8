"""An attack run's results: rows per attack, the evasion table, ``report.json``/``report.md``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AttackReport", "AttackRow", "markdown", "write_report"]


@dataclass
class AttackRow:
    """One attack against one target: success over every attempt, and what it cost."""

    attack: str
    target: str
    attempts: int
    images: int
    asr: float
    clean_rate: float
    budget: int
    seconds_per_attempt: float
    prompts: list[dict[str, Any]] = field(default_factory=list)
    #: The same attack inputs on the base model (inversion, img2img, concept-vector): whether
    #: the attack brings the concept back where nothing is erased.
    base_asr: float | None = None


@dataclass
class AttackReport:
    """Everything a run measured (``to_json`` is ``report.json``)."""

    config: dict[str, Any]
    target: str
    rows: list[AttackRow]
    evasion: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "target": self.target,
            "rows": [asdict(r) for r in self.rows],
            "evasion": self.evasion,
        }

    def row(self, attack: str) -> AttackRow:
        """The row of ``attack`` (KeyError when it did not run)."""
        for r in self.rows:
            if r.attack == attack:
                return r
        raise KeyError(attack)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(report: AttackReport) -> str:
    """The report as Markdown: success rates, evasion per rewrite, the prompts found."""
    config = report.config
    lines = [
        f"# Attack report: erasing {config['erase']!r} on {config['base'] or 'the concept world'}",
        "",
        "ASR: share of the attack's images that show the concept; clean: share of the plain "
        "concept prompts' images (same seeds); base ASR: the same attack inputs on the base "
        "model.",
        "",
        "| attack | target | attempts | images | clean | ASR | base ASR | budget | s / attempt |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.attack} | {r.target} | {r.attempts} | {r.images} | {_pct(r.clean_rate)} | "
            f"{_pct(r.asr)} | {_pct(r.base_asr)} | {r.budget} | {r.seconds_per_attempt:.2f} |"
        )
    if report.evasion is not None:
        ev = report.evasion
        lines += [
            "",
            f"## Prompt-check evasion ({ev['check']}: flags {ev['flagged']} of {ev['prompts']})",
            "",
            "| rewrite | applicable | evaded | rate | example |",
            "|---|---|---|---|---|",
        ]
        for row in ev["rows"]:
            example = row["examples"][0][1] if row["examples"] else ""
            lines.append(
                f"| {row['kind']} | {row['flagged']} | {row['evaded']} | {_pct(row['rate'])} | "
                f"`{example}` |"
            )
    typed = [
        (r.attack, d)
        for r in report.rows
        if r.attack in ("tokens", "concept-vector") and r.target == report.target
        for d in r.prompts
    ]
    if typed:
        lines += [
            "",
            "## Discrete prompts found",
            "",
            "| attack | prompt | attack prompt | shown |",
        ]
        lines.append("|---|---|---|---|")
        lines += [f"| {a} | {d['prompt']} | `{d['text']}` | {d['shown']} |" for a, d in typed]
    return "\n".join(lines) + "\n"


def write_report(report: AttackReport, out: Path) -> None:
    """``out/report.json`` and ``out/report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    (out / "report.md").write_text(markdown(report))
