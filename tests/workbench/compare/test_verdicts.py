"""Verdicts follow the intervals: supported or refuted only when they do not overlap."""

from __future__ import annotations

from safety_lora.workbench.compare.rows import Evaluation, TrainingRun
from safety_lora.workbench.compare.verdicts import (
    REFUTED,
    SAME,
    SUPPORTED,
    claims,
    compare,
    summary,
)


def test_compare_needs_separated_intervals() -> None:
    fast, slow = (10.0, (8.0, 12.0)), (30.0, (25.0, 35.0))
    assert compare(fast, slow, lower=True) == SUPPORTED
    assert compare(slow, fast, lower=True) == REFUTED
    assert compare(fast, slow, lower=False) == REFUTED
    assert compare(fast, (13.0, (11.0, 15.0)), lower=True) == SAME


def _eval(
    method: str, seed: int, shown: list[float], other: list[float], said: list[float] | None = None
) -> Evaluation:
    """One unit at strength 1.0; ``said``: its paraphrase probe (neighbours all kept)."""
    rate = sum(shown) / len(shown)
    preservation = sum(other) / len(other)
    each = {"shown": shown, "other": other, "kept": None, "paraphrase": said}
    each["neighbour"] = None if said is None else [1.0] * len(said)
    return Evaluation(
        method=method, kind="adapter", strength=1.0, seed=seed, seconds=1.0, concept_rate=rate,
        erasure=1.0 - rate, kept=None, other=preservation, preservation=preservation,
        block_rate=0.0, images=len(shown) + len(other), each=each,
        paraphrase_rate=None if said is None else sum(said) / len(said),
        neighbour_kept=None if said is None else 1.0,
    )  # fmt: skip


def _train(
    method: str, family: str, seed: int, seconds: float, variant: str = "reg"
) -> TrainingRun:
    role = "adapter" if variant == "reg" else "variant"
    return TrainingRun(
        method=method, role=role, family=family, rank=4, budget=4, seed=seed, variant=variant,
        lr=1e-3, lr_scale=1.0, step_budget=50, path="a.safetensors", trainable_parameters=1,
        file_bytes=1, seconds_per_step=1.0, training_seconds=seconds, steps=50, kept_step=50,
        stopped_early=False, curve=[], reached_bar=True, steps_to_bar=25, seconds_to_bar=seconds,
    )  # fmt: skip


def test_claims_from_a_run() -> None:
    """LoKr erases as well as LoRA in a third of the time; the original recipe leaves the
    concept in half the images."""
    seeds = range(3)
    evaluations = [_eval("lora r4", s, [0.0] * 8, [1.0] * 8) for s in seeds]
    evaluations += [_eval("lokr r4", s, [0.0] * 8, [1.0] * 8) for s in seeds]
    evaluations += [_eval("lora r4 none", s, [1.0, 0.0] * 4, [1.0] * 8) for s in seeds]
    training = [_train("lora r4", "lora", s, 30.0 + s) for s in seeds]
    training += [_train("lokr r4", "lokr", s, 10.0 + s) for s in seeds]
    training += [_train("lora r4 none", "lora", s, 0.0, "none") for s in seeds]
    found = claims(evaluations, training, lora="lora r4", factorised=["lokr r4"],
                   original="lora r4 none", stability_seeds=3)  # fmt: skip
    by = {(c.claim.split()[1], c.measure): c.verdict for c in found}
    assert by[("factorised", "training seconds to the bar")] == SUPPORTED
    assert by[("factorised", "concept shown at strength 1.0")] == SAME
    on = "(3 seeds, the runs without regularisation have)"
    assert by[("original", f"concept shown at strength 1.0 {on}")] == SUPPORTED
    verdicts = {v.claim: v.verdict for v in summary(found)}
    assert verdicts["the factorised family is faster and more accurate"] == SAME  # only faster
    assert verdicts["the original LoRA without regularisation is less effective"] == SUPPORTED
    parts = next(v for v in summary(found) if v.claim.startswith("the factorised"))
    assert parts.decided_by == ["lokr r4 vs lora r4, training seconds to the bar: supported"]


def test_paraphrases_and_neighbours_count_where_measured() -> None:
    """LoKr erases the word it was trained on as well as LoRA but leaves its synonyms: the
    factorised family is not more accurate."""
    seeds = range(3)
    evaluations = [_eval("lora r4", s, [0.0] * 8, [1.0] * 8, [0.0] * 8) for s in seeds]
    evaluations += [_eval("lokr r4", s, [0.0] * 8, [1.0] * 8, [1.0] * 8) for s in seeds]
    training = [_train("lora r4", "lora", s, 30.0) for s in seeds]
    training += [_train("lokr r4", "lokr", s, 30.0) for s in seeds]
    found = claims(evaluations, training, lora="lora r4", factorised=["lokr r4"],
                   original=None, stability_seeds=3)  # fmt: skip
    by = {c.measure: c.verdict for c in found}
    assert by["paraphrases shown at strength 1.0"] == REFUTED
    assert by["neighbour kept at strength 1.0"] == SAME
    assert summary(found)[0].verdict == REFUTED
    unmeasured = [_eval(e.method, e.seed, e.each["shown"] or [], e.each["other"] or [])
                  for e in evaluations]  # fmt: skip
    measures = {c.measure for c in claims(unmeasured, training, lora="lora r4",
                                          factorised=["lokr r4"], original=None,
                                          stability_seeds=3)}  # fmt: skip
    assert "paraphrases shown at strength 1.0" not in measures
