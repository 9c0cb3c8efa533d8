"""``RaySettings``: the ``ray:`` section of the service settings (replicas, autoscaling, GPUs).

Plain pydantic, so a settings file with a ``ray:`` section validates without Ray installed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from safety_lora.service.settings import ServiceSettings

__all__ = [
    "Autoscaling",
    "DeploymentSettings",
    "GeneratorSettings",
    "IngressSettings",
    "JudgeSettings",
    "LayoutError",
    "PromptCheckSettings",
    "RaySettings",
    "serve_config",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Autoscaling(_Strict):
    """Ray Serve autoscaling: replicas follow the requests in flight per replica."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} is over max_replicas {self.max_replicas}"
            )
        return self


class DeploymentSettings(_Strict):
    """One deployment's replicas (fixed, or ``autoscaling``) and the resources of each."""

    num_replicas: int = Field(default=1, ge=1)
    autoscaling: Autoscaling | None = None
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float | Literal["auto"] = Field(
        default=0.0, description="a GPU fraction; auto: 1 when the cluster has a GPU, else 0"
    )
    max_ongoing_requests: int = Field(default=8, ge=1)

    def gpus(self, cluster_gpus: float) -> float:
        """GPUs per replica, ``auto`` resolved for a cluster of ``cluster_gpus``."""
        if self.num_gpus == "auto":
            return 1.0 if cluster_gpus > 0 else 0.0
        return self.num_gpus

    def replicas_at_start(self) -> int:
        """The replicas Serve starts: ``num_replicas``, or autoscaling's ``min_replicas``
        (at least one, the one the first request needs)."""
        if self.autoscaling is None:
            return self.num_replicas
        return max(self.autoscaling.min_replicas, 1)

    def options(self, cluster_gpus: float) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options`` for this deployment."""
        scaling: dict[str, Any] = (
            {"autoscaling_config": self.autoscaling.model_dump()}
            if self.autoscaling is not None
            else {"num_replicas": self.num_replicas}
        )
        return {
            **scaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.gpus(cluster_gpus)},
        }


class IngressSettings(DeploymentSettings):
    """The HTTP ingress (the service's FastAPI app): light work, many requests at once."""

    num_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=64, ge=1)


class GeneratorSettings(DeploymentSettings):
    """The wrapped pipeline: a GPU when the cluster has one, a few requests at a time."""

    num_gpus: float | Literal["auto"] = Field(
        default="auto", description="a GPU fraction; auto: 1 when the cluster has a GPU, else 0"
    )
    max_ongoing_requests: int = Field(default=4, ge=1)


class JudgeSettings(DeploymentSettings):
    """The image classifiers' deployment: requests' images are scored in shared batches."""

    num_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=32, ge=1)
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0, le=10)


class PromptCheckSettings(DeploymentSettings):
    """The prompt classifiers (cheap: several small replicas)."""

    num_replicas: int = Field(default=2, ge=1)
    num_cpus: float = Field(default=0.25, ge=0)
    max_ongoing_requests: int = Field(default=64, ge=1)


class LayoutError(ValueError):
    """The layout cannot start on the cluster: the message names the shortfall and the
    settings to change."""


#: The smallest CPU or GPU share a default is scaled down to; below it the layout is refused.
MIN_SHARE = 0.01


class RaySettings(_Strict):
    """How ``safety-lora serve --ray`` lays the service out on a Ray cluster.

    Each deployment's section is merged with that deployment's defaults field by field.
    CPU shares left at their defaults shrink to fit a smaller cluster (:meth:`fitted`).
    """

    app_name: str = Field(default="safety-lora", min_length=1)
    route_prefix: str = Field(default="/", pattern=r"^/")
    ingress: IngressSettings = Field(default_factory=IngressSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    prompt_check: PromptCheckSettings = Field(default_factory=PromptCheckSettings)
    judge_timeout_s: float = Field(
        default=60.0, gt=0, description="one classifier call; past it the image fails closed"
    )

    def deployments(self, *, generation: bool) -> dict[str, DeploymentSettings]:
        """The deployed sections by their ``ray:`` key (no generator without ``generation``)."""
        names = ["ingress", *(["generator"] if generation else []), "judge", "prompt_check"]
        return {name: getattr(self, name) for name in names}

    def fitted(self, cpus: float, gpus: float, *, generation: bool = True) -> RaySettings:
        """This layout on a cluster of ``cpus`` CPUs and ``gpus`` GPUs (``ray.cluster_resources``).

        Every replica Serve starts must fit at once. When they do not, what is left to the
        defaults gives way: ``num_gpus: auto`` takes what the given GPU shares leave of a GPU,
        and the CPU shares left at their defaults are scaled down together; shares the
        settings give are kept. Raises :class:`LayoutError` naming the shortfall and the
        settings to change when even that cannot fit.
        """
        layout = self._fit_gpus(gpus, generation)
        used = layout.deployments(generation=generation)
        given = {n: d for n, d in used.items() if "num_cpus" in d.model_fields_set}
        default = {n: d for n, d in used.items() if n not in given}
        fixed, scalable = _cpus(given), _cpus(default)
        if fixed + scalable <= cpus + 1e-9:
            return layout
        factor = (cpus - fixed) / scalable if scalable else 0.0
        scaled = {n: math.floor(d.num_cpus * factor * 1000) / 1000 for n, d in default.items()}
        if not scaled or min(scaled.values()) < MIN_SHARE:
            short = fixed + scalable - cpus
            change = _keys(given) if fixed >= cpus or not default else _keys(used)
            raise LayoutError(
                f"the Ray layout needs {fixed + scalable:g} CPUs to start "
                f"({_shares(used, 'num_cpus')}) and the cluster has {cpus:g}: {short:g} short. "
                f"Lower num_cpus or the replicas of {change} in the service settings (serve "
                f"--config FILE), or start Ray with more CPUs"
            )
        update = {n: default[n].model_copy(update={"num_cpus": c}) for n, c in scaled.items()}
        return layout.model_copy(update=update)

    def _fit_gpus(self, gpus: float, generation: bool) -> RaySettings:
        """This layout, its ``auto`` GPU shares cut to what the given shares leave of ``gpus``
        GPUs when a whole GPU per replica does not fit (:meth:`fitted`)."""
        used = self.deployments(generation=generation)
        auto = {n: d for n, d in used.items() if d.num_gpus == "auto"}
        resolved: dict[str, DeploymentSettings] = {}
        given = sum(d.replicas_at_start() * d.gpus(gpus) for n, d in used.items() if n not in auto)
        need = given + sum(d.replicas_at_start() * d.gpus(gpus) for d in auto.values())
        if need > gpus + 1e-9 and gpus > given:
            replicas = sum(d.replicas_at_start() for d in auto.values())
            share = math.floor((gpus - given) / replicas * 1000) / 1000
            if share >= MIN_SHARE:
                resolved = {n: d.model_copy(update={"num_gpus": share}) for n, d in auto.items()}
                need = given + replicas * share
        if need > gpus + 1e-9:
            whole = {n: d.model_copy(update={"num_gpus": d.gpus(gpus)}) for n, d in auto.items()}
            shown = {**used, **whole, **resolved}
            raise LayoutError(
                f"the Ray layout needs {need:g} GPUs to start ({_shares(shown, 'num_gpus')}) "
                f"and the cluster has {gpus:g}: lower num_gpus or the replicas of "
                f"{_keys(n for n, d in shown.items() if d.num_gpus)} in the service settings "
                f"(serve --config FILE), or add GPUs to the cluster"
            )
        return self.model_copy(update=resolved) if resolved else self


def _cpus(deployments: dict[str, DeploymentSettings]) -> float:
    return sum(d.replicas_at_start() * d.num_cpus for d in deployments.values())


def _shares(deployments: dict[str, DeploymentSettings], field: str) -> str:
    """``ray.ingress: 1 x 0.5, ...``: the replicas and share of ``field`` of each deployment
    that asks for some."""
    return ", ".join(
        f"ray.{n}: {d.replicas_at_start()} x {getattr(d, field):g}"
        for n, d in deployments.items()
        if getattr(d, field)
    )


def _keys(names: Iterable[str]) -> str:
    return ", ".join(f"ray.{n}" for n in names)


def serve_config(settings: ServiceSettings) -> dict[str, Any]:
    """The Serve config file (``serve deploy``) that runs ``settings`` on a cluster.

    The settings travel as the application builder's ``args``; a policy file or model
    folder they name must exist at that path on the cluster's nodes (or use a preset).
    """
    args = settings.model_dump(mode="json", exclude_defaults=True)
    args["policy"] = settings.policy
    args["ray"] = settings.ray.model_dump(mode="json")  # every knob, to edit in place
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": settings.host, "port": settings.port},
        "applications": [
            {
                "name": settings.ray.app_name,
                "route_prefix": settings.ray.route_prefix,
                "import_path": "safety_lora.service.ray_app:app_builder",
                "args": args,
            }
        ],
    }
