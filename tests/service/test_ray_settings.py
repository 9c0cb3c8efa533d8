"""The Ray layout settings: a partial ``ray:`` section merges with each deployment's defaults
field by field, and the layout fits the cluster it starts on (default CPU shares scaled down,
given ones kept) or is refused at once naming the shortfall and the settings to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from safety_lora.service import ServiceSettings
from safety_lora.service.ray_app import build_app
from safety_lora.service.ray_settings import LayoutError, RaySettings


def _cpus(layout: RaySettings, *, generation: bool = True) -> dict[str, tuple[int, float]]:
    """(replicas at start, CPU share) per deployment."""
    return {
        name: (d.replicas_at_start(), d.num_cpus)
        for name, d in layout.deployments(generation=generation).items()
    }


def test_a_partial_section_keeps_the_other_defaults_of_that_deployment(tmp_path: Path) -> None:
    """The bug: ``generator: {num_replicas: 2}`` used to reset the generator's ``num_gpus:
    auto`` to 0 and each section's CPU share and request limit to the generic defaults."""
    path = tmp_path / "serve.yaml"
    path.write_text(
        "ray:\n"
        "  ingress: {num_replicas: 2}\n"
        "  generator: {num_replicas: 2}\n"
        "  judge: {max_batch_size: 4}\n"
        "  prompt_check: {max_ongoing_requests: 10}\n",
        encoding="utf-8",
    )
    layout = ServiceSettings.from_file(path).ray
    default = RaySettings()
    assert (layout.ingress.num_replicas, layout.ingress.num_cpus) == (2, 0.5)
    assert layout.ingress.max_ongoing_requests == default.ingress.max_ongoing_requests == 64
    assert (layout.generator.num_replicas, layout.generator.num_gpus) == (2, "auto")
    assert layout.generator.max_ongoing_requests == 4
    assert (layout.judge.max_batch_size, layout.judge.num_cpus) == (4, 0.5)
    assert (layout.prompt_check.num_replicas, layout.prompt_check.num_cpus) == (2, 0.25)
    assert layout.prompt_check.max_ongoing_requests == 10


def test_the_default_layout_is_unchanged_where_it_fits() -> None:
    layout = RaySettings()
    assert sum(n * c for n, c in _cpus(layout).values()) == 2.5
    assert layout.fitted(4.0, 0.0) is layout


def test_the_default_shares_shrink_together_to_fit_two_cpus() -> None:
    """The issue's case: 2.5 CPUs asked of a two-core machine, and Ray never scheduled it."""
    fitted = RaySettings().fitted(2.0, 0.0)
    assert _cpus(fitted) == {
        "ingress": (1, 0.4),
        "generator": (1, 0.8),
        "judge": (1, 0.4),
        "prompt_check": (2, 0.2),
    }
    assert sum(n * c for n, c in _cpus(fitted).values()) <= 2.0


def test_given_shares_are_kept_and_the_defaults_fit_around_them() -> None:
    layout = ServiceSettings.from_dict({"ray": {"generator": {"num_cpus": 1.0}}}).ray
    fitted = layout.fitted(2.0, 0.0)
    shares = _cpus(fitted)
    assert shares["generator"] == (1, 1.0)
    assert shares["ingress"] == (1, 0.333) and shares["prompt_check"] == (2, 0.166)
    assert sum(n * c for n, c in shares.values()) <= 2.0


def test_without_generation_the_generator_asks_for_nothing() -> None:
    layout = RaySettings()
    assert layout.fitted(1.5, 0.0, generation=False) is layout
    assert "generator" not in _cpus(layout.fitted(1.0, 0.0, generation=False), generation=False)


def test_given_shares_over_the_cluster_are_refused_naming_shortfall_and_setting() -> None:
    layout = ServiceSettings.from_dict({"ray": {"generator": {"num_cpus": 3.0}}}).ray
    with pytest.raises(LayoutError) as e:
        layout.fitted(2.0, 0.0)
    message = str(e.value)
    assert message.startswith("the Ray layout needs 4.5 CPUs to start (")
    assert "ray.generator: 1 x 3" in message and "ray.prompt_check: 2 x 0.25" in message
    assert "the cluster has 2: 2.5 short. Lower num_cpus or the replicas of ray.generator " in (
        message
    )


def test_a_layout_whose_defaults_would_shrink_to_nothing_is_refused() -> None:
    with pytest.raises(LayoutError, match=r"needs 2.5 CPUs to start .* cluster has 0: 2.5 short"):
        RaySettings().fitted(0.0, 0.0)


def test_autoscaling_counts_its_minimum_replicas() -> None:
    layout = ServiceSettings.from_dict(
        {"ray": {"judge": {"num_cpus": 1.0, "autoscaling": {"min_replicas": 3}}}}
    ).ray
    with pytest.raises(LayoutError, match=r"ray.judge: 3 x 1,"):
        layout.fitted(3.0, 0.0)
    assert _cpus(layout.fitted(4.0, 0.0))["judge"] == (3, 1.0)


def test_auto_gpus_take_what_given_shares_leave_and_given_ones_must_fit() -> None:
    layout = ServiceSettings.from_dict({"ray": {"judge": {"num_gpus": 0.25}}}).ray
    assert layout.fitted(8.0, 2.0) is layout  # a whole GPU for the generator fits
    assert layout.fitted(8.0, 2.0).generator.gpus(2.0) == 1.0
    assert layout.fitted(8.0, 1.0).generator.num_gpus == 0.75  # the docs' example, one GPU
    assert RaySettings().fitted(8.0, 0.0).generator.gpus(0.0) == 0.0  # auto: no GPU, none
    with pytest.raises(LayoutError, match=r"needs 0.25 GPUs to start \(ray.judge: 1 x 0.25\)"):
        layout.fitted(8.0, 0.0)
    whole = ServiceSettings.from_dict({"ray": {"judge": {"num_gpus": 1.0}}}).ray
    with pytest.raises(
        LayoutError, match=r"needs 2 GPUs .* \(ray.generator: 1 x 1, ray.judge: 1 x 1\)"
    ):
        whole.fitted(8.0, 1.0)


def test_build_app_refuses_a_layout_that_cannot_start_before_deploying_anything() -> None:
    settings = ServiceSettings(policy="strict", ray={"judge": {"num_cpus": 2.0}})
    with pytest.raises(
        LayoutError, match=r"needs 4 CPUs .* cluster has 1: 3 short. Lower .* of ray.judge in"
    ):
        build_app(settings, cluster={"CPU": 1.0})
    assert build_app(settings, cluster={"CPU": 4.0}) is not None
