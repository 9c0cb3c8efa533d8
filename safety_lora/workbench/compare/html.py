"""``report.html``: one self-contained page (images inline as data URIs, no script, no
network) with the verdict table first (below a smoke run's warning), its forest plot and the
answer in words, then the plots, the tables and the image grids."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from safety_lora.workbench.compare.config import CompareConfig
    from safety_lora.workbench.compare.report import Report
    from safety_lora.workbench.compare.sections import Section

__all__ = ["html_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f0f0f0; }
td.supported { background: #d8f0d8; } td.refuted { background: #f6d5d5; }
td.equivalent { background: #d8e4f6; } td.inconclusive { background: #eeeeee; }
p.smoke { background: #fff3c4; border: 1px solid #e0c060; padding: 0.5rem; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.25rem 0; }
figure { margin: 1rem 0; } figcaption { font-size: 0.85rem; color: #555; }
"""
_CLASSES = {
    "supported": "supported",
    "refuted": "refuted",
    "equivalent": "equivalent",
    "inconclusive": "inconclusive",
    "inconclusive (did not converge)": "inconclusive",
}


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            css = _CLASSES.get(cell)
            cells.append(
                f'<td class="{css}">{escape(cell)}</td>' if css else f"<td>{escape(cell)}</td>"
            )
        body.append("<tr>" + "".join(cells) + "</tr>")
    rows_html = "".join(body)
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>'
    )


def html_report(config: CompareConfig, report: Report, sections: list[Section]) -> str:
    """The page for ``report`` and its ``sections`` (the Markdown's tables): a smoke run's
    warning, the verdict table, its forest plot, the answer in words, then the rest."""
    from safety_lora.workbench.compare.report import SMOKE

    out = config.out
    model = config.base or "concept world (bundled)"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Compare: erasing {escape(config.erase)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Compare: erasing <code>{escape(config.erase)}</code> on {escape(model)}</h1>",
    ]
    if config.smoke:
        parts.append(f'<p class="smoke" id="smoke">{escape(SMOKE)}</p>')
    figures = {
        "scatter": "Erasure vs preservation: LoRA blue circles, LoHa orange squares, LoKr green "
        "triangles (a family's other rows in lighter shades), every other method its own colour "
        "and marker; an adapter's strengths joined, the marker growing with the strength; 95% "
        "intervals as error bars, the Pareto front circled.",
        "curves": "Concept shown and preservation against adapter strength (95% intervals).",
        "costs": "Per-step cost against the base model, interleaved pairs (95% intervals).",
        "stability": "Preservation and concept shown per run at 0.5x / 1x / 2x each family's "
        "learning rate.",
    }
    for i, section in enumerate(sections):
        parts.append(f"<h2>{escape(section.title)}</h2><p>{escape(section.text)}</p>")
        if section.header:
            table_id = "verdict" if i == 0 else f"table-{i}"
            parts.append(_table(section.header, section.rows, table_id))
        if i == 0:  # the verdict's forest plot, its answer in words, then the plots
            forest = _image(out / report.files.forest, "forest")
            caption = (
                "Each difference \u201cA better by\u201d with its 95% interval, in units of its "
                "margin: the grey band is practical equivalence."
            )
            parts.append(f"<figure>{forest}<figcaption>{escape(caption)}</figcaption></figure>")
            parts.append(f'<h2>Answer</h2><p id="answer">{escape(report.reading)}</p>')
            parts.append("<h2>Figures</h2>")
            for key, caption in figures.items():
                image = _image(out / getattr(report.files, key), key)
                parts.append(f"<figure>{image}<figcaption>{escape(caption)}</figcaption></figure>")
    parts.append("<h2>Images per method (seed 0, one row per strength)</h2>")
    for method, name in report.files.grids.items():
        parts.append(f"<h3>{escape(method)}</h3>{_image(out / name, method)}")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
