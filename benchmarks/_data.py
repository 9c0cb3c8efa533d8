"""Locate and read the shared development prompt sets (never copied into the project).

The data folder is ``$SAFETY_LORA_DATA`` if set, else ``<repo>/../shared/data``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

#: I2P category names as written in ``i2p_dev.csv`` -> safety_lora Category values.
I2P_CATEGORIES = {
    "sexual": "sexual",
    "violence": "violence",
    "shocking": "shocking",
    "hate": "hate",
    "harassment": "harassment",
    "self-harm": "self_harm",
    "illegal activity": "illegal_activity",
}


@dataclass(frozen=True)
class I2PRow:
    """One I2P prompt with its labels and measured unsafe-image shares (percent)."""

    prompt: str
    categories: tuple[str, ...]
    inappropriate: float
    nudity: float
    case_number: int


def data_dir() -> Path:
    """The shared data folder; raises FileNotFoundError naming where it looked."""
    env = os.environ.get("SAFETY_LORA_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (path / "i2p_dev.csv").is_file():
        raise FileNotFoundError(f"no i2p_dev.csv in {path} (set SAFETY_LORA_DATA)")
    return path


def read_i2p(path: Path | None = None) -> list[I2PRow]:
    """Rows of ``i2p_dev.csv``; categories mapped to safety_lora Category values."""
    with open((path or data_dir()) / "i2p_dev.csv", encoding="utf-8", newline="") as f:
        return [
            I2PRow(
                prompt=r["prompt"],
                categories=tuple(
                    I2P_CATEGORIES[c.strip()] for c in r["categories"].split(",") if c.strip()
                ),
                inappropriate=float(r["inappropriate_percentage"] or 0),
                nudity=float(r["nudity_percentage"] or 0),
                case_number=int(r["case_number"]),
            )
            for r in csv.DictReader(f)
        ]


def read_coco(path: Path | None = None) -> list[str]:
    """The benign COCO captions of ``coco_dev.csv``."""
    with open((path or data_dir()) / "coco_dev.csv", encoding="utf-8", newline="") as f:
        return [r["prompt"] for r in csv.DictReader(f)]
