"""``safety-lora compare`` on the bundled model with a smoke config, end to end with its pool
of two worker processes, and its report.html opened in a real headless Chromium (Debian's,
driven by Selenium)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # make test-fast leaves it out

#: The smallest run that still answers every claim: every family (their regularity variants
#: give the two claims about the original recipe) on one seed, at strength 1.0, with the step
#: budget LoRA needs to erase some red; no SLD, text embedding, attack or closed form; a smoke
#: test, as --quick marks its runs.
SMOKE: dict[str, Any] = {
    "erase": "red", "smoke": True, "seeds": 1, "stability_seeds": 1, "prompts_per_concept": 3,
    "steps": 25,
    "strengths": [1.0], "lr_scales": [], "sld_presets": [], "embedding_strengths": [],
    "closed_form": False,
    "attack_budget": 0, "cost_pairs": 1, "grid_images": 2, "workers": 2,
}  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("quick")
    settings, out = folder / "smoke.json", folder / "cmp"
    settings.write_text(json.dumps(SMOKE))
    command = [str(Path(sys.executable).with_name("safety-lora")), "compare"]
    command += ["--config", str(settings), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (out / "logs" / "worker-2.log").is_file()  # the second worker ran
    return out, json.loads((out / "report.json").read_text())


def test_quick_run_answers_every_claim(quick: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick
    verdicts = ("supported", "refuted", "equivalent", "inconclusive",
                "inconclusive (did not converge)")  # fmt: skip
    assert [v["verdict"] for v in data["verdicts"]] and all(
        v["verdict"] in verdicts for v in data["verdicts"]
    )
    reached = {t["method"]: t["reached_bar"] == t["runs"] for t in data["training"]}
    for c in data["comparisons"]:  # families short of the bar are never ranked on accuracy
        if c["claim"].startswith("the factorised") and not (reached[c["a"]] and reached[c["b"]]):
            assert c["verdict"] == "inconclusive (did not converge)", c
    assert len(data["verdicts"]) == 3
    families = {t["family"] for t in data["training"]}
    assert families == {"lora", "loha", "lokr"}
    base = next(r for r in data["rows"] if r["kind"] == "base")
    assert base["concept_rate"] >= 0.9  # the bundled model draws red when asked
    lora = next(r for r in data["rows"] if r["method"] == "lora r4" and r["strength"] == 1.0)
    assert lora["concept_rate"] < base["concept_rate"]  # 25 steps already erase some red
    assert data["kohya"]["identical"] is True


def test_report_html_renders_in_a_browser(
    quick: tuple[Path, dict[str, Any]], chromium: Any
) -> None:
    from selenium.webdriver.common.by import By

    out, data = quick
    driver = chromium
    driver.get((out / "report.html").as_uri())
    smoke = driver.find_element(By.ID, "smoke")  # above the verdicts: they decide nothing
    assert "Smoke test" in smoke.text
    first = driver.find_element(By.TAG_NAME, "table")
    assert smoke.location["y"] < first.location["y"]
    assert first.get_attribute("id") == "verdict"
    rows = first.find_elements(By.CSS_SELECTOR, "tbody tr")
    shown = [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows]
    assert shown == [v["verdict"] for v in data["verdicts"]]
    images = driver.find_elements(By.TAG_NAME, "img")
    assert len(images) == 5 + len(data["files"]["grids"])
    for image in images:  # decoded and laid out: a broken data URI has no natural width
        width = driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", image
        )
        assert width and width > 0, image.get_attribute("alt")
