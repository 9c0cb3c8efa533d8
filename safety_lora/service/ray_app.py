"""The service on Ray Serve: ingress, generator, judge and prompt-check deployments.

``build_app(settings)`` returns a Serve application; ``app_builder`` is the same for a Serve
config file (``serve deploy serve.yaml``, see :func:`serve_config`). The ingress is the very
FastAPI app of ``safety-lora serve`` (same routes, auth, limits, metrics), built with an engine
whose classifiers are proxies to the judge and prompt-check deployments and with a generator
that is a proxy to the generator deployment; the generator's own engine judges its images
through the judge too. A classifier call that fails (a judge replica died twice, a timeout)
raises inside the engine, so the policy's ``on_error`` decides: never an unjudged image.

The policy travels as validated JSON in the deployments' arguments: deploying again with a
changed policy changes the arguments, so Serve replaces replicas one by one (old ones finish
their requests) and every decision names the policy it was made under (``policy_sha256``).
Each replica writes an audit file of its own (``audit.<replica>.jsonl``; ``safety-lora audit
merge`` joins them in time order).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.handle import DeploymentHandle

from safety_lora.audit import replica_audit_path
from safety_lora.classifiers.base import ImageScores, PromptScores
from safety_lora.decisions import PromptDecision
from safety_lora.policies.engine import PolicyEngine
from safety_lora.policies.schema import Policy
from safety_lora.service.cancel import Cancellation, Cancelled
from safety_lora.service.generator import Generated, GenerationCall, Limits, LocalGenerator
from safety_lora.service.settings import ServiceSettings

__all__ = ["app_builder", "build_app", "serve_on_ray"]

logger = logging.getLogger("safety_lora.service.ray")

#: How often a waiting ingress looks at its request's deadline and the client.
POLL_S = 0.05


def _replica_policy(data: dict[str, Any]) -> Policy:
    """The policy a replica enforces, its audit lines going to a file of its own."""
    policy = Policy.model_validate(data)
    if policy.audit.path is None:
        return policy
    replica = serve.get_replica_context().replica_id.unique_id
    audit = policy.audit.model_copy(
        update={"path": replica_audit_path(policy.audit.path, f"{_deployment()}-{replica}")}
    )
    return policy.model_copy(update={"audit": audit})


def _deployment() -> str:
    return serve.get_replica_context().deployment.lower()


# -- classifiers served by other deployments ---------------------------------------------------


class PolicyMismatch(RuntimeError):
    """A replica was asked to classify for another policy than its own (a reload is under
    way): the caller fails closed rather than mix two policies in one decision."""


class _Remote:
    """A classifier of the policy, run by a deployment: same name and fingerprint as local.

    Every call names the caller's policy; a replica of another policy refuses it.
    """

    def __init__(
        self,
        handle: DeploymentHandle[Any],
        policy_sha256: str,
        index: int,
        name: str,
        fingerprint: str,
        timeout_s: float,
    ) -> None:
        self.handle, self.policy_sha256 = handle, policy_sha256
        self.index, self.timeout_s = index, timeout_s
        self.name, self.fingerprint = name, fingerprint

    def _call(self, items: list[Any]) -> Any:
        """One remote call, retried once (another replica) when the one it reached died or
        runs another policy; a second failure raises, and the engine fails closed."""

        def call() -> Any:
            response = self.handle.classify.remote(self.policy_sha256, self.index, items)
            return response.result(timeout_s=self.timeout_s)

        try:
            return call()
        except (RayActorError, PolicyMismatch) as e:
            logger.warning("%s: %s; retrying once", self.name, type(e).__name__)
            return call()


def _check_policy(mine: str, theirs: str) -> None:
    if mine != theirs:
        raise PolicyMismatch(
            f"this replica enforces policy {mine[:12]}, the caller {theirs[:12]} "
            f"(a reload is under way)"
        )


class RemoteImageClassifier(_Remote):
    def classify(self, images: Sequence[Any]) -> list[ImageScores]:
        result: list[ImageScores] = self._call(list(images))
        return result


class RemotePromptClassifier(_Remote):
    def classify(self, prompts: Sequence[str]) -> list[PromptScores]:
        result: list[PromptScores] = self._call(list(prompts))
        return result


async def _remote(
    handle: DeploymentHandle[Any], cls: type[_Remote], policy: Policy, timeout_s: float
) -> list[Any]:
    """Proxies to every classifier ``handle``'s deployment runs (replica constructors await)."""
    sha = policy.sha256()
    described = await handle.describe.remote()
    return [cls(handle, sha, i, name, fp, timeout_s) for i, (name, fp) in enumerate(described)]


# -- deployments -------------------------------------------------------------------------------


class JudgeReplica:
    """The policy's image classifiers; concurrent requests' images are scored in one batch."""

    def __init__(self, policy: dict[str, Any], max_batch_size: int, wait_s: float) -> None:
        loaded = Policy.model_validate(policy)
        self.policy_sha256 = loaded.sha256()
        self.classifiers = PolicyEngine(loaded).image_classifiers
        batch = serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)
        self._score: Any = batch(self._score_batch)

    def describe(self) -> list[tuple[str, str]]:
        return [(c.name, c.fingerprint) for c in self.classifiers]

    async def classify(
        self, policy_sha256: str, index: int, images: list[Any]
    ) -> list[ImageScores]:
        _check_policy(self.policy_sha256, policy_sha256)
        results = await asyncio.gather(*(self._score(index, image) for image in images))
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)

    async def _score_batch(self, indexes: list[int], images: list[Any]) -> list[Any]:
        """One classifier call per classifier for the whole batch; where it fails, each
        image alone, so one request's bad image fails only that request."""
        out: list[Any] = [None] * len(images)
        for index in sorted(set(indexes)):
            mine = [k for k, i in enumerate(indexes) if i == index]
            classify = self.classifiers[index].classify
            try:
                results = await asyncio.to_thread(classify, [images[k] for k in mine])
                if len(results) != len(mine):
                    raise ValueError(f"returned {len(results)} results for {len(mine)} images")
                for k, result in zip(mine, results, strict=True):
                    out[k] = result
            except Exception:
                for k in mine:
                    try:
                        (out[k],) = await asyncio.to_thread(classify, [images[k]])
                    except Exception as e:
                        out[k] = e
        return out


class PromptCheckReplica:
    """The policy's prompt classifiers (cheap: many replicas)."""

    def __init__(self, policy: dict[str, Any]) -> None:
        loaded = Policy.model_validate(policy)
        self.policy_sha256 = loaded.sha256()
        self.classifiers = PolicyEngine(loaded).prompt_classifiers

    def describe(self) -> list[tuple[str, str]]:
        return [(c.name, c.fingerprint) for c in self.classifiers]

    def classify(self, policy_sha256: str, index: int, prompts: list[str]) -> list[PromptScores]:
        _check_policy(self.policy_sha256, policy_sha256)
        return self.classifiers[index].classify(prompts)


class GeneratorReplica:
    """The wrapped pipeline with its steering; its images are judged by the judge deployment."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, settings: dict[str, Any], policy: dict[str, Any], judge: Any
    ) -> None:
        service = ServiceSettings.model_validate(settings)
        timeout = service.ray.judge_timeout_s
        enforced = _replica_policy(policy)
        engine = PolicyEngine(
            enforced,
            image_classifiers=await _remote(judge, RemoteImageClassifier, enforced, timeout),
        )
        self.local = LocalGenerator(service, engine)
        self._limits = await asyncio.to_thread(self.local.load)

    def limits(self) -> Limits:
        return self._limits

    async def generate(
        self,
        policy_sha256: str,
        prompt: str,
        call: GenerationCall,
        prompt_decision: PromptDecision,
        request_id: str,
        timeout_s: float,
    ) -> Generated | Cancelled | PolicyMismatch:
        """Generate in a thread; a cancelled call (client gone) stops at the next step."""
        try:
            _check_policy(self.local.engine.policy_sha256, policy_sha256)
        except PolicyMismatch as e:
            return e
        job = Cancellation(timeout_s)
        try:
            return await asyncio.to_thread(
                self.local.generate, prompt, call, prompt_decision, request_id, job
            )
        except Cancelled as e:
            return e
        except asyncio.CancelledError:
            job.cancel("disconnected", "the client disconnected")
            raise

    def __del__(self) -> None:
        local = getattr(self, "local", None)  # absent when the constructor failed
        if local is not None:
            local.close()


class RemoteGenerator:
    """The ingress's :class:`~safety_lora.service.generator.Generator`: the deployment's."""

    def __init__(self, handle: DeploymentHandle[Any], policy_sha256: str) -> None:
        self.handle, self.policy_sha256 = handle, policy_sha256

    def load(self) -> Limits:
        limits: Limits = self.handle.limits.remote().result()
        return limits

    def generate(
        self,
        prompt: str,
        call: GenerationCall,
        prompt_decision: PromptDecision,
        request_id: str,
        job: Cancellation,
    ) -> Generated:
        """Generate on a replica of this policy (one retry when a reload routed the call to
        a replica of another); while waiting, the request's deadline and client count."""
        for _ in range(2):
            response = self.handle.generate.remote(
                self.policy_sha256, prompt, call, prompt_decision, request_id, job.remaining()
            )
            while True:
                try:
                    result = response.result(timeout_s=POLL_S)
                    break
                except TimeoutError:
                    try:
                        job.check()
                    except Cancelled:
                        response.cancel()  # type: ignore[no-untyped-call]
                        raise
            if not isinstance(result, PolicyMismatch):
                break
        if isinstance(result, PolicyMismatch):
            raise Cancelled("reload", f"the policy is being reloaded, retry: {result}")
        if isinstance(result, Cancelled):
            raise result
        generated: Generated = result
        return generated

    def close(self) -> None:
        """The deployment's model is released with its replicas."""


class IngressReplica:
    """The FastAPI app of ``safety-lora serve`` over the other deployments."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        settings: dict[str, Any],
        policy: dict[str, Any],
        judge: Any,
        prompt_check: Any,
        generator: Any | None,
    ) -> None:
        self.settings = ServiceSettings.model_validate(settings)
        timeout = self.settings.ray.judge_timeout_s
        enforced = _replica_policy(policy)
        self.engine = PolicyEngine(
            enforced,
            image_classifiers=await _remote(judge, RemoteImageClassifier, enforced, timeout),
            prompt_classifiers=await _remote(
                prompt_check, RemotePromptClassifier, enforced, timeout
            ),
        )
        self.generator = (
            None if generator is None else RemoteGenerator(generator, enforced.sha256())
        )

    def __serve_build_asgi_app__(self) -> Any:
        from safety_lora.service.app import create_app

        return create_app(self.settings, engine=self.engine, generator=self.generator)


#: The deployments, as Serve names them (replica classes stay plain, typed classes).
Judge: Any = serve.deployment(name="Judge")(JudgeReplica)
PromptCheck: Any = serve.deployment(name="PromptCheck")(PromptCheckReplica)
Generator: Any = serve.deployment(name="Generator")(GeneratorReplica)
Ingress: Any = serve.deployment(name="Ingress")(serve.ingress()(IngressReplica))


# -- building the application ------------------------------------------------------------------


def build_app(settings: ServiceSettings, *, cluster: Mapping[str, float] | None = None) -> Any:
    """The Serve application for ``settings`` (``serve.run`` it, or deploy its config).

    The layout is fitted to ``cluster`` (its ``CPU`` and ``GPU`` counts; default: the
    connected cluster's ``ray.cluster_resources()``, nothing fitted when Ray is not started):
    default CPU shares shrink to fit, ``num_gpus: auto`` resolves, and a layout that cannot
    start raises :class:`~safety_lora.service.ray_settings.LayoutError` at once rather than
    wait for replicas Ray can never schedule.
    """
    import ray

    if cluster is None and ray.is_initialized():  # type: ignore[no-untyped-call]
        cluster = ray.cluster_resources()  # type: ignore[no-untyped-call]
    cluster_gpus = float((cluster or {}).get("GPU", 0))
    ray_settings = settings.ray
    if cluster is not None:
        cpus = float(cluster.get("CPU", 0))
        ray_settings = ray_settings.fitted(cpus, cluster_gpus, generation=settings.generation)
        if ray_settings is not settings.ray:
            logger.info(
                "the default CPU shares are scaled to fit the cluster's %g CPUs: %s",
                cpus,
                ", ".join(
                    f"{name} {d.num_cpus:g}"
                    for name, d in ray_settings.deployments(generation=settings.generation).items()
                ),
            )
    policy: dict[str, Any] = settings.load_policy().model_dump(mode="json")
    data = settings.model_dump(mode="json")
    judge = Judge.options(**ray_settings.judge.options(cluster_gpus)).bind(
        policy, ray_settings.judge.max_batch_size, ray_settings.judge.batch_wait_timeout_s
    )
    prompt_check = PromptCheck.options(**ray_settings.prompt_check.options(cluster_gpus)).bind(
        policy
    )
    generator = None
    if settings.generation:
        generator = Generator.options(**ray_settings.generator.options(cluster_gpus)).bind(
            data, policy, judge
        )
    return Ingress.options(**ray_settings.ingress.options(cluster_gpus)).bind(
        data, policy, judge, prompt_check, generator
    )


def app_builder(args: dict[str, Any]) -> Any:
    """Serve's application builder (``import_path`` of a config file): ``args`` are the
    service settings, as in a settings file."""
    return build_app(ServiceSettings.from_dict(dict(args), source="serve config args"))


def serve_on_ray(settings: ServiceSettings, *, address: str | None = None) -> None:
    """Deploy ``settings`` on Ray Serve.

    Without ``address``: start a local Ray instance, serve until interrupted, then shut it
    down. With one: join that cluster, deploy (updating a running application in place:
    replicas are replaced one by one with the new settings and policy, none dropped) and
    return; the application keeps running on the cluster.
    """
    import ray

    ray.init(address=address, include_dashboard=False if address is None else None)
    try:
        app = build_app(settings)  # a layout that cannot start fails here, before Serve starts
        serve.start(http_options={"host": settings.host, "port": settings.port})
        logger.info("deploying %r on Ray Serve", settings.ray.app_name)
        name, prefix = settings.ray.app_name, settings.ray.route_prefix
        if address is not None:
            serve.run(app, name=name, route_prefix=prefix)
            return
        try:
            serve.run(app, name=name, route_prefix=prefix, blocking=True)
        except KeyboardInterrupt:
            logger.info("interrupted: shutting down Serve and the local Ray instance")
        finally:
            serve.shutdown()  # type: ignore[no-untyped-call]
    finally:
        if address is None:
            ray.shutdown()  # type: ignore[no-untyped-call]
