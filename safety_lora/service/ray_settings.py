"""``RaySettings``: the ``ray:`` section of the service settings (replicas, autoscaling, GPUs).

Plain pydantic, so a settings file with a ``ray:`` section validates without Ray installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from safety_lora.service.settings import ServiceSettings

__all__ = ["Autoscaling", "DeploymentSettings", "JudgeSettings", "RaySettings", "serve_config"]


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

    def options(self, cluster_gpus: float) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options`` for this deployment."""
        gpus = (1.0 if cluster_gpus > 0 else 0.0) if self.num_gpus == "auto" else self.num_gpus
        scaling: dict[str, Any] = (
            {"autoscaling_config": self.autoscaling.model_dump()}
            if self.autoscaling is not None
            else {"num_replicas": self.num_replicas}
        )
        return {
            **scaling,
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": gpus},
        }


class JudgeSettings(DeploymentSettings):
    """The image classifiers' deployment: requests' images are scored in shared batches."""

    num_cpus: float = Field(default=0.5, ge=0)
    max_ongoing_requests: int = Field(default=32, ge=1)
    max_batch_size: int = Field(default=16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0, le=10)


def _generator() -> DeploymentSettings:
    return DeploymentSettings(num_gpus="auto", max_ongoing_requests=4)


def _prompt_check() -> DeploymentSettings:
    return DeploymentSettings(num_replicas=2, num_cpus=0.25, max_ongoing_requests=64)


def _ingress() -> DeploymentSettings:
    return DeploymentSettings(num_cpus=0.5, max_ongoing_requests=64)


class RaySettings(_Strict):
    """How ``safety-lora serve --ray`` lays the service out on a Ray cluster."""

    app_name: str = Field(default="safety-lora", min_length=1)
    route_prefix: str = Field(default="/", pattern=r"^/")
    ingress: DeploymentSettings = Field(default_factory=_ingress)
    generator: DeploymentSettings = Field(default_factory=_generator)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    prompt_check: DeploymentSettings = Field(default_factory=_prompt_check)
    judge_timeout_s: float = Field(
        default=60.0, gt=0, description="one classifier call; past it the image fails closed"
    )


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
