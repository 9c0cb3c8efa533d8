"""Verdicts follow the difference's interval against the claim's margin: supported, refuted,
equivalent (TOST) or inconclusive with the seeds that would decide it."""

from __future__ import annotations

import math

import pytest

from safety_lora.workbench.compare.rows import Evaluation, TrainingRun
from safety_lora.workbench.compare.verdicts import (
    EQUIVALENT,
    INCONCLUSIVE,
    NOT_CONVERGED,
    REFUTED,
    SUPPORTED,
    claims,
    decide,
    seeds_needed,
    summary,
)


def test_decision_rule_against_the_margin() -> None:
    assert decide((0.15, 0.30), 0.10) == SUPPORTED  # wholly beyond +margin
    assert decide((-0.40, -0.12), 0.10) == REFUTED  # wholly beyond -margin
    assert decide((-0.05, 0.08), 0.10) == EQUIVALENT  # wholly inside: both one-sided tests pass
    assert decide((0.05, 0.20), 0.10) == INCONCLUSIVE  # better, but maybe not by the margin
    assert decide((-0.30, 0.30), 0.10) == INCONCLUSIVE  # 2 seeds' [0, 100]: too wide to say


def test_seeds_needed_from_the_observed_spread() -> None:
    """Interval [0.1, 0.5] on 2 seeds, margin 0.1: the per-seed sd is 0.2 * sqrt(2) / 1.96;
    the centre 0.3 is 0.2 from the margin; 80% power adds z = 0.84."""
    z = 1.959964 + 0.841621
    sd = 0.2 * math.sqrt(2) / 1.959964
    assert seeds_needed((0.1, 0.5), 0.1, 2) == math.ceil((z * sd / 0.2) ** 2)
    # inside the margin: the interval must shrink under the distance to it
    sd = 0.3 * math.sqrt(5) / 1.959964
    assert seeds_needed((-0.28, 0.32), 0.1, 5) == math.ceil((z * sd / 0.08) ** 2)
    assert seeds_needed((-0.2, 0.4), 0.1, 5) is None  # centred on the margin: none decides it
    # a lopsided interval (a spread over 2 seeds): planned from its centre, and always more
    # seeds than the run had
    assert seeds_needed((-0.18, 0.0), 0.05, 2) == math.ceil(
        (z * (0.09 * math.sqrt(2) / 1.959964) / 0.04) ** 2
    )
    assert seeds_needed((-0.18, 0.0), 0.05, 2) > 2 * 2


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
    method: str, family: str, seed: int, seconds: float, variant: str = "reg", reached: bool = True
) -> TrainingRun:
    role = "adapter" if variant == "reg" else "variant"
    return TrainingRun(
        method=method, role=role, family=family, rank=4, budget=4, seed=seed, variant=variant,
        lr=1e-3, lr_scale=1.0, step_budget=50, path="a.safetensors", trainable_parameters=1,
        file_bytes=1, seconds_per_step=1.0, training_seconds=seconds, steps=50, kept_step=50,
        stopped_early=False, curve=[], reached_bar=reached, steps_to_bar=25 if reached else None,
        seconds_to_bar=seconds if reached else None,
    )  # fmt: skip


def _run(lora: list[float], lokr: list[float], none: list[float], seeds: int = 3) -> list:
    """Concept shown per image (8 images per seed) of LoRA, LoKr and LoRA's original recipe;
    LoKr trains in a third of LoRA's time; everything else kept."""
    evaluations = [_eval("lora r4", s, lora, [1.0] * 8) for s in range(seeds)]
    evaluations += [_eval("lokr r4", s, lokr, [1.0] * 8) for s in range(seeds)]
    evaluations += [_eval("lora r4 none", s, none, [1.0] * 8) for s in range(seeds)]
    training = [_train("lora r4", "lora", s, 30.0 + s) for s in range(seeds)]
    training += [_train("lokr r4", "lokr", s, 10.0 + s) for s in range(seeds)]
    training += [_train("lora r4 none", "lora", s, 0.0, "none") for s in range(seeds)]
    return claims(evaluations, training, lora="lora r4", factorised=["lokr r4"],
                  original="lora r4 none")  # fmt: skip


def test_claims_from_a_run() -> None:
    """LoKr erases as well as LoRA in a third of the time: faster (supported) and as
    accurate (equivalent), so not "faster and more accurate"; the original recipe leaves the
    concept in half the images: less effective (supported) on every seed."""
    found = _run([0.0] * 8, [0.0] * 8, [1.0, 0.0] * 4)
    by = {(c.claim.split()[1], c.measure): c for c in found}
    fast = by[("factorised", "seconds to the bar")]
    assert fast.verdict == SUPPORTED and fast.difference == pytest.approx(20.0)
    assert fast.margin == pytest.approx(0.25 * 31.0) and fast.margin_text == "±25% of B"
    accurate = by[("factorised", "concept shown at strength 1.0")]
    assert accurate.verdict == EQUIVALENT and accurate.difference_ci == (0.0, 0.0)
    assert accurate.margin == 0.10
    effective = by[("original", "concept shown at strength 1.0")]
    assert effective.verdict == SUPPORTED and effective.difference == pytest.approx(0.5)
    assert effective.seeds == 3  # the main run's seeds, not a stability subset
    verdicts = {v.claim: v for v in summary(found)}
    factorised = verdicts["the factorised family is faster and more accurate"]
    assert factorised.verdict == REFUTED  # as accurate is not more accurate
    assert factorised.decided_by[0] == (
        "lokr r4 vs lora r4, concept shown at strength 1.0: equivalent"
    )
    assert "concept shown ±10 points" in factorised.margins
    assert "seconds to the bar ±25% of B" in factorised.margins
    effective_claim = verdicts["the original LoRA without regularisation is less effective"]
    assert effective_claim.verdict == SUPPORTED


def test_a_family_short_of_the_bar_is_not_compared() -> None:
    """--quick's failure: LoKr shows red in every image after a tiny budget while LoRA
    reached the bar; its accuracy is inconclusive (did not converge), never refuted."""
    evaluations = [_eval("lora r4", s, [0.0] * 8, [1.0] * 8) for s in range(2)]
    evaluations += [_eval("lokr r4", s, [1.0] * 8, [1.0] * 8) for s in range(2)]
    training = [_train("lora r4", "lora", s, 30.0) for s in range(2)]
    training += [_train("lokr r4", "lokr", s, 30.0, reached=False) for s in range(2)]
    found = claims(evaluations, training, lora="lora r4", factorised=["lokr r4"], original=None)
    assert {c.verdict for c in found} == {NOT_CONVERGED}
    # LoKr's 30 s are a lower bound of its time to the bar: no slower than LoRA's 30 s is all
    # they show, which decides nothing
    speed = next(c for c in found if c.measure.startswith("seconds to the bar"))
    assert speed.difference == 0.0 and "short of the bar" in speed.measure
    assert summary(found)[0].verdict == NOT_CONVERGED


def _speed(lora: list[tuple[float, bool]], lokr: list[tuple[float, bool]]) -> list:
    """The factorised claim's comparisons from (training seconds, reached the bar) per seed;
    every image erased, everything kept."""
    evaluations = [_eval(m, s, [0.0] * 8, [1.0] * 8) for m in ("lora r4", "lokr r4")
                   for s in range(len(lora))]  # fmt: skip
    training = [_train("lora r4", "lora", s, t, reached=r) for s, (t, r) in enumerate(lora)]
    training += [_train("lokr r4", "lokr", s, t, reached=r) for s, (t, r) in enumerate(lokr)]
    return claims(evaluations, training, lora="lora r4", factorised=["lokr r4"], original=None)


def test_a_family_short_of_the_bar_is_still_found_slower() -> None:
    """Censored times: LoKr missed the bar on one seed after 90 s and took 80-90 s on the others,
    where LoRA reached it in 30 s on every seed. Even its lower bound is slower beyond the
    margin: refuted, so the claim is refuted while its accuracy stays undecided."""
    found = _speed([(30.0, True), (31.0, True), (32.0, True)],
                   [(80.0, True), (90.0, False), (85.0, True)])  # fmt: skip
    speed = next(c for c in found if c.measure.startswith("seconds to the bar"))
    assert speed.a_value == pytest.approx(85.0) and speed.verdict == REFUTED
    assert {c.verdict for c in found if c is not speed} == {NOT_CONVERGED}
    assert summary(found)[0].verdict == REFUTED
    # the same lower bound looking faster proves nothing: LoKr might need far longer
    found = _speed([(90.0, True), (91.0, True), (92.0, True)],
                   [(10.0, True), (12.0, False), (11.0, True)])  # fmt: skip
    speed = next(c for c in found if c.measure.startswith("seconds to the bar"))
    assert speed.difference > 0 and speed.verdict == NOT_CONVERGED
    # LoRA's runs censored instead: LoKr faster than LoRA's lower bound is faster
    found = _speed([(90.0, False), (91.0, True), (92.0, True)],
                   [(10.0, True), (12.0, True), (11.0, True)])  # fmt: skip
    speed = next(c for c in found if c.measure.startswith("seconds to the bar"))
    assert speed.verdict == SUPPORTED


def test_an_undecided_claim_says_how_many_seeds_would_decide_it() -> None:
    """The original recipe shows the concept on one seed in two: a wide interval that
    straddles the margin; the verdict names the seeds that would decide it."""
    found = _run([0.0] * 8, [0.0] * 8, [0.0] * 8, seeds=2)
    found += [
        c
        for c in _run([0.0] * 8, [0.0] * 8, [1.0, 0.0, 0.0, 0.0] * 2, seeds=2)
        if c.claim.startswith("the original")
    ]
    undecided = [c for c in found if c.verdict == INCONCLUSIVE]
    assert undecided and all(c.seeds_needed is not None and c.seeds_needed > 2 for c in undecided)
    verdict = next(v for v in summary(undecided) if v.claim.startswith("the original"))
    assert verdict.verdict == INCONCLUSIVE
    assert verdict.seeds_needed == max(c.seeds_needed or 0 for c in undecided)


def test_paraphrases_and_neighbours_count_where_measured() -> None:
    """LoKr erases the word it was trained on as well as LoRA but leaves its synonyms: the
    factorised family is not more accurate."""
    seeds = range(3)
    evaluations = [_eval("lora r4", s, [0.0] * 8, [1.0] * 8, [0.0] * 8) for s in seeds]
    evaluations += [_eval("lokr r4", s, [0.0] * 8, [1.0] * 8, [1.0] * 8) for s in seeds]
    training = [_train("lora r4", "lora", s, 30.0) for s in seeds]
    training += [_train("lokr r4", "lokr", s, 30.0) for s in seeds]
    found = claims(evaluations, training, lora="lora r4", factorised=["lokr r4"], original=None)
    by = {c.measure: c.verdict for c in found}
    assert by["paraphrases shown at strength 1.0"] == REFUTED
    assert by["neighbour kept at strength 1.0"] == EQUIVALENT
    assert summary(found)[0].verdict == REFUTED
    unmeasured = [_eval(e.method, e.seed, e.each["shown"] or [], e.each["other"] or [])
                  for e in evaluations]  # fmt: skip
    measures = {c.measure for c in claims(unmeasured, training, lora="lora r4",
                                          factorised=["lokr r4"], original=None)}  # fmt: skip
    assert "paraphrases shown at strength 1.0" not in measures
