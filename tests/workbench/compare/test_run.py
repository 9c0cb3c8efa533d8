"""A small compare run on a tiny pipeline writes every file with values that add up.

One smoke run serves every test of the module but the style's: two families, two seeds, two
strengths, two steps per image, erasure probes every :data:`CHUNK` steps (two per training).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from safety_lora.testing import tiny_pipeline
from safety_lora.workbench.compare import CompareConfig, run, units
from safety_lora.workbench.compare.methods import AdapterMethod, Sampler
from safety_lora.workbench.compare.metrics import BAR, ConceptWorldJudge
from safety_lora.workbench.compare.verdicts import NOT_CONVERGED, decide

pytestmark = pytest.mark.slow  # make test-fast leaves it out

RATES = ("concept_rate", "erasure", "kept", "other", "preservation", "block_rate")
#: Training steps between two erasure probes here (the run's is 25).
CHUNK = 5


def _config(out: Path, **overrides: Any) -> CompareConfig:
    fields: dict[str, Any] = {
        "erase": "red",
        "families": ["lora", "lokr"],
        "seeds": 2,
        "steps": 2 * CHUNK,
        "prompts_per_concept": 2,
        "num_inference_steps": 2,
        "strengths": (0.5, 1.0),
        "sld_presets": ["weak", "strong"],
        "attack_sld": ["strong"],
        "embedding_strengths": (1.0, 2.0),
        "stability_seeds": 1,
        "lr_scales": [2.0],
        "grid_images": 2,
        "attack_budget": 1,
        "attack_images": 1,
        "cost_pairs": 2,
        "out": out,
        "progress": False,
        **overrides,
    }
    return CompareConfig(**fields)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[CompareConfig, Any, dict[str, Any]]:
    pipe = tiny_pipeline()
    config = _config(tmp_path_factory.mktemp("compare"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(units, "CHUNK", CHUNK)
        return config, pipe, run(config, pipe=pipe)


def _row(data: dict[str, Any], method: str, strength: float) -> dict[str, Any]:
    return next(r for r in data["rows"] if r["method"] == method and r["strength"] == strength)


def test_writes_every_file(compared: tuple[CompareConfig, Any, dict[str, Any]]) -> None:
    config, _, data = compared
    out = config.out
    assert json.loads((out / "report.json").read_text())["reading"] == data["reading"]
    markdown = (out / "report.md").read_text()
    assert (
        markdown.index("## Verdict")
        < markdown.index("![forest](verdict_forest.png)")
        < markdown.index("## Answer")
        < markdown.index("## Four axes per family")
        < markdown.index("## Erasure and preservation")
    )
    assert "Smoke test" not in markdown  # only --quick says so
    questions = ("Are LoHa and LoKr faster and more accurate than LoRA?",
                 "Is the original recipe less effective?")  # fmt: skip
    assert all(q in data["reading"] for q in questions)  # answered in words
    assert "| lora r4 | 1 |" in markdown and "## Inference cost per denoising step" in markdown
    assert "## Stability" in markdown and "## Regularity (seed 0)" in markdown
    assert "## Where erasure fails in practice (strength 1.0)" in markdown
    assert "\u201ca crimson circle\u201d" in markdown
    html = (out / "report.html").read_text()
    assert html.count("<img ") == 5 + len(data["files"]["grids"]) and 'src="http' not in html
    assert html.index('id="verdict"') < html.index('alt="forest"') < html.index('id="answer"')
    figures = ("forest", "scatter", "curves", "costs", "stability")
    pngs = [out / data["files"][k] for k in figures]
    pngs += [out / g for g in data["files"]["grids"].values()]
    # base, classifier, negative prompt, 2 SLD presets, text embedding, closed form, kohya
    # file, 2 families x (main, 3 regularity variants, 2x learning rate)
    assert len(data["files"]["grids"]) == 8 + 2 * 5
    assert "| text embedding | 2 |" in markdown and "## Solved, not trained" in markdown
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0
    names = sorted(p.name for p in (out / "adapters").iterdir())
    assert "lora-r4-b4-s1-reg-lr1.safetensors" in names and "closed-form.safetensors" in names
    assert "lora-r4-b4-s0-reg-lr1-kohya.safetensors" in names
    assert "lokr-r4-b4-s0-none-lr1.safetensors" in names
    assert "lora-r4-b4-s0-reg-lr2.safetensors" in names


def test_values_are_sane(compared: tuple[CompareConfig, Any, dict[str, Any]]) -> None:
    config, _, data = compared
    methods = {r["method"] for r in data["rows"] if r["kind"] not in ("variant", "stability")}
    assert methods == {"base", "negative prompt", "SLD weak", "SLD strong", "text embedding",
                       "classifier only", "lora r4", "lokr r4", "closed form",
                       "lora r4 (kohya file)"}  # fmt: skip
    embedding = [(r["kind"], r["strength"], r["seeds"]) for r in data["rows"]
                 if r["method"] == "text embedding"]  # fmt: skip
    assert embedding == [("embedding", 1.0, 2), ("embedding", 2.0, 2)]
    for row in data["rows"]:
        for key in RATES:
            assert 0.0 <= row[key] <= 1.0, (row["method"], key, row[key])
            if row.get(key + "_ci"):
                lo, hi = row[key + "_ci"]
                assert lo - 1e-9 <= row[key] <= hi + 1e-9, (row["method"], key)
        assert row["erasure"] == pytest.approx(1.0 - row["concept_rate"])
        probed = row["strength"] == 1.0 or row["kind"] == "base"  # the probes' strength
        for key in ("paraphrase_rate", "neighbour_kept"):
            assert (row[key] is not None) == probed, (row["method"], row["strength"], key)
            if probed:
                lo, hi = row[key + "_ci"]
                assert 0.0 <= lo <= row[key] <= hi <= 1.0, (row["method"], key)
    said = data["prompts"]["paraphrase"]
    assert (
        said == ["a crimson circle", "a crimson square"] and len(data["prompts"]["neighbour"]) == 2
    )
    for t in data["training"]:
        assert t["trainable_parameters"] > 0 and t["file_bytes"] > 0 and t["runs"] == 2
        assert t["seconds_per_step"] > 0 and t["step_budget"] == config.steps
    sld = next(c for c in data["costs"] if c["method"] == "SLD strong")
    assert sld["extra_unet_calls_per_step"] == 1.0
    text = next(c for c in data["costs"] if c["method"] == "text embedding")
    assert text["extra_unet_calls_per_step"] == 0.0 and text["mode"] == ""
    solves = {s["method"]: s for s in data["solves"]}
    assert solves["closed form"]["path"].endswith("closed-form.safetensors")
    assert solves["text embedding"]["path"] is None and solves["text embedding"]["seconds"] > 0
    for c in data["costs"]:
        assert c["vs_base_ci"][0] <= c["vs_base"] <= c["vs_base_ci"][1]
        assert c["pairs"] == config.cost_pairs
    modes = {(c["method"], c["mode"]) for c in data["costs"]}
    for name in ("lora r4", "lokr r4", "closed form"):
        assert {(name, "dynamic"), (name, "fused")} <= modes
    assert ("base (control)", "") in modes


def test_four_axes_per_family(compared: tuple[CompareConfig, Any, dict[str, Any]]) -> None:
    """Each family's speed, efficacy, stability and regularity measures, from the rows they
    summarise."""
    config, _, data = compared
    measures = {(m["family"], m["measure"]): m for m in data["measures"]}
    for family in ("lora", "lokr"):
        axes = {m["axis"] for m in data["measures"] if m["family"] == family}
        assert axes == {"speed", "efficacy", "stability", "regularity"}
        row = _row(data, f"{family} r4", 1.0)
        shown = measures[(family, "concept shown at strength 1.0")]
        assert (shown["value"], tuple(shown["ci"])) == (
            row["concept_rate"],
            tuple(row["concept_rate_ci"]),
        )
        fused = measures[(family, "inference cost fused")]
        cost = next(c for c in data["costs"]
                    if c["method"] == f"{family} r4" and c["mode"] == "fused")  # fmt: skip
        assert fused["value"] == cost["vs_base"]
        share = measures[(family, "share of seeds and learning rates at the bar")]
        assert share["n"] == config.seeds + config.stability_seed_count  # 1x and 2x
        assert 0.0 <= share["value"] <= 1.0
    effect = measures[("lora", "effect of regularisation + early stopping on preservation")]
    assert effect["n"] == config.seeds  # the original recipe ran on every seed
    assert measures[("lokr", "effect of regularisation + early stopping on preservation")]["n"] == 1


def test_training_stops_at_the_erasure_bar(
    compared: tuple[CompareConfig, Any, dict[str, Any]],
) -> None:
    """Early stopping ends at the first probe at or under the bar (or after patience) and
    keeps the best probe's adapter; without it, the whole budget is trained."""
    config, _, data = compared
    runs, budget = data["training_runs"], config.steps
    assert {(t["variant"], t["seed"]) for t in runs if t["family"] == "lora"} >= {
        ("reg", 0), ("reg", 1), ("none", 0), ("no-preserve", 0), ("no-early-stop", 0)}  # fmt: skip
    for t in runs:
        curve = t["curve"]
        assert [c["step"] for c in curve] == list(range(CHUNK, t["steps"] + 1, CHUNK))
        rates = [c["concept_rate"] for c in curve]
        if t["variant"] in ("reg", "no-preserve"):
            if t["steps"] < budget:
                assert rates[-1] <= BAR and t["stopped_early"]
            assert t["kept_step"] == curve[rates.index(min(rates))]["step"]
        else:
            assert t["steps"] == budget and not t["stopped_early"] and t["kept_step"] == budget
        reached = next((c["step"] for c in curve if c["concept_rate"] <= BAR), None)
        assert t["steps_to_bar"] == reached and t["reached_bar"] == (reached is not None)


def test_kohya_file_gives_the_peft_adapters_images(
    compared: tuple[CompareConfig, Any, dict[str, Any]],
) -> None:
    _, _, data = compared
    assert data["kohya"] == {"seeds": 2, "identical": True, "max_pixel_difference": 0.0}
    kohya, peft = _row(data, "lora r4 (kohya file)", 1.0), _row(data, "lora r4", 1.0)
    assert {k: kohya[k] for k in RATES} == {k: peft[k] for k in RATES}


def test_verdicts_follow_the_intervals(
    compared: tuple[CompareConfig, Any, dict[str, Any]],
) -> None:
    config, _, data = compared
    claims = [v["claim"] for v in data["verdicts"]]
    assert claims == [
        "the factorised family is faster and more accurate",
        "PEFT LoRA with regularisation and early stopping is more stable",
        "the original LoRA without regularisation is less effective",
    ]
    for c in data["comparisons"]:
        lower = any(w in c["measure"] for w in ("concept", "seconds", "spread", "paraphrase"))
        sign = -1 if lower else 1
        assert c["difference"] == pytest.approx(sign * (c["a_value"] - c["b_value"]))
        lo, hi = c["difference_ci"]
        assert lo - 1e-9 <= c["difference"] <= hi + 1e-9 or c["measure"].startswith("spread")
        assert c["verdict"] in (decide((lo, hi), c["margin"]), NOT_CONVERGED)
        assert c["seeds"] == config.seeds  # no claim rests on a stability subset
    lora = _row(data, "lora r4", 1.0)
    factorised = next(
        c for c in data["comparisons"] if c["measure"] == "concept shown at strength 1.0"
    )
    assert factorised["b"] == "lora r4" and factorised["b_value"] == lora["concept_rate"]
    assert tuple(factorised["b_ci"]) == tuple(lora["concept_rate_ci"])


def test_attack_success_column(compared: tuple[CompareConfig, Any, dict[str, Any]]) -> None:
    config, _, data = compared
    attacked = [a["method"] for a in data["attacks"]]  # SLD: the attack_sld presets only
    assert attacked == ["SLD strong", "text embedding", "lora r4", "lokr r4", "closed form"]
    rates = ("clean", "soft_asr", "token_asr", "inversion_asr", "inversion_base_asr",
             "img2img_asr", "img2img_base_asr", "concept_vector_asr",
             "concept_vector_base_asr")  # fmt: skip
    for row in data["attacks"]:
        assert row["budget"] == config.attack_budget and row["seconds_per_attempt"] > 0
        assert all(0.0 <= row[k] <= 1.0 for k in rates), row
    harness = json.loads((config.out / "attacks" / "lora-r4" / "report.json").read_text())
    inversion = next(r for r in harness["rows"] if r["attack"] == "inversion")
    lora = next(a for a in data["attacks"] if a["method"] == "lora r4")
    assert (lora["inversion_asr"], lora["inversion_base_asr"]) == (
        inversion["asr"], inversion["base_asr"])  # fmt: skip
    report = (config.out / "report.md").read_text()
    title = f"## Attack success ({config.attack_budget} steps or generations per attempt)"
    assert title in report and "| img2img ASR (base) |" in report
    assert (config.out / "attacks" / "text-embedding" / "report.json").is_file()
    assert (config.out / "attacks" / "sld-strong" / "report.json").is_file()


def test_base_rate_is_the_separately_computed_rate(
    compared: tuple[CompareConfig, Any, dict[str, Any]],
) -> None:
    config, pipe, data = compared
    prompts = data["prompts"]["target"]
    sampler = Sampler(pipe, num_inference_steps=config.num_inference_steps, guidance_scale=4.0)
    images = sampler.sample(prompts, list(range(len(prompts))))  # seed index 0: seeds 0, 1, ...
    expected = sum(ConceptWorldJudge("red").shows(images)) / len(images)
    assert _row(data, "base", 0.0)["concept_rate"] == expected


def test_adapter_at_strength_zero_is_the_base_model(
    compared: tuple[CompareConfig, Any, dict[str, Any]],
) -> None:
    """Why the base row stands for every adapter's strength 0."""
    config, pipe, data = compared
    sampler = Sampler(pipe, num_inference_steps=config.num_inference_steps, guidance_scale=4.0)
    prompts = data["prompts"]["target"]
    seeds = list(range(len(prompts)))
    path = config.out / "adapters" / "lora-r4-b4-s0-reg-lr1.safetensors"
    method = AdapterMethod(sampler, path, "lora")
    base = [np.asarray(i) for i in sampler.sample(prompts, seeds)]
    method.load()
    try:
        zero = [np.asarray(i) for i in method.generate(prompts, seeds, 0.0)]
        one = [np.asarray(i) for i in method.generate(prompts, seeds, 1.0)]
    finally:
        method.unload()
    assert all((a == b).all() for a, b in zip(base, zero, strict=True))
    assert any((a != b).any() for a, b in zip(base, one, strict=True))


def test_resume_reuses_units(
    compared: tuple[CompareConfig, Any, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, pipe, data = compared
    log = config.out / "logs" / "units.jsonl"
    timed = [json.loads(line) for line in log.read_text().splitlines()]
    units = sorted(str(p.relative_to(config.out / "units"))[:-5]
                   for p in (config.out / "units").rglob("*.json"))  # fmt: skip
    assert sorted(t["unit"] for t in timed) == units  # each unit computed once, and timed
    assert all(t["seconds"] >= 0 for t in timed)
    with pytest.raises(FileExistsError, match="--resume"):
        run(config, pipe=pipe)
    with pytest.raises(ValueError, match="other settings"):
        run(_config(config.out, steps=CHUNK, resume=True), pipe=pipe)

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("resumed run trained again")

    monkeypatch.setattr("safety_lora.workbench.training.esd.EsdTrainer.train_step", no_training)
    again = run(config.model_copy(update={"resume": True}), pipe=pipe)
    assert again["rows"] == data["rows"]
    assert again["costs"] == data["costs"]  # timings read back, not measured again
    assert log.read_text().count("\n") == len(timed)  # no unit computed again


def test_a_style_is_compared_like_a_colour(tmp_path: Path) -> None:
    """``--erase striped``: the target prompts name the style, the other styles are the
    preserved concepts, colour and shape must be kept; a style has no synonyms to probe."""
    config = _config(tmp_path / "cmp", erase="striped", families=["lora"], seeds=1, steps=CHUNK,
                     strengths=(1.0,), regularity=False, closed_form=False, kohya=False,
                     sld_presets=[], attack_budget=0, lr_scales=[], cost_pairs=1)  # fmt: skip
    data = run(config, pipe=tiny_pipeline())
    prompts = data["prompts"]
    assert all("striped" in p for p in prompts["target"]) and prompts["paraphrase"] == []
    assert not any("striped" in p for p in prompts["other"])
    assert {"dotted"} <= {w for p in prompts["other"] for w in p.split()}
    lora = _row(data, "lora r4", 1.0)
    assert lora["paraphrase_rate"] is None and 0.0 <= lora["neighbour_kept"] <= 1.0
    markdown = (config.out / "report.md").read_text()
    assert "Paraphrases: this concept has no other words (n/a)." in markdown
    assert "\u201ca striped " in markdown  # a neighbour prompt quoted
