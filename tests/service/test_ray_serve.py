"""The service on Ray Serve: a real local Ray instance on loopback, the same requests as the
plain service, a judge replica killed mid-request, a policy reloaded under load, and audit
files per replica merged in time order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from _service_helpers import REFUSED_WORD, b64, free_port, png, policy_yaml
from ray import serve
from typer.testing import CliRunner

from safety_lora.audit import merge_audit_logs
from safety_lora.cli import app as cli
from safety_lora.policies.schema import Policy
from safety_lora.service import BackgroundServer, ServiceSettings, create_app, hash_api_key
from safety_lora.service.ray_app import app_builder, build_app
from safety_lora.service.ray_settings import serve_config

pytestmark = pytest.mark.slow  # make test-fast leaves it out

KEY = "ray-test-key"
APP = "safety-lora"
#: What differs between two runs or servers: ids, times, and the audit file (one per replica).
VOLATILE = {"request_id", "timings_ms", "id", "created", "time", "path"}


def _settings(root: Path, *, sexual: float, name: str) -> ServiceSettings:
    return ServiceSettings(
        policy=str(policy_yaml(root / f"{name}.yaml", sexual=sexual, action="blur")),
        api_keys=[hash_api_key(KEY)],
        audit_path=root / name / "audit.jsonl",
        max_steps=4,
        rate_limit_per_minute=0.0,  # the reload test's request loop runs flat out
        ray={"judge": {"max_batch_size": 8}, "prompt_check": {"num_replicas": 2}},
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray")


@pytest.fixture(scope="module")
def ray_url(local_ray: None, root: Path) -> Iterator[str]:
    """Serve on the tests' local Ray instance (``local_ray``, tests/conftest.py), serving the
    test policy; shut down after this module, Ray stays up for the Ray tests that follow."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # deployed the way a cluster deploys it: the Serve config's application builder and args
    (app,) = serve_config(_settings(root, sexual=0.9, name="first"))["applications"]
    serve.run(app_builder(app["args"]), name=app["name"], route_prefix=app["route_prefix"])
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def plain_url(root: Path) -> Iterator[str]:
    app = create_app(_settings(root, sexual=0.9, name="plain"))
    with BackgroundServer(app) as server:
        yield server.url


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {KEY}"})


def _pixels(b64_png: str) -> tuple[str, tuple[int, int], bytes]:
    """An image's pixels (its provenance record names the request, which differs per run)."""
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64_png))) as image:
        return image.mode, image.size, image.tobytes()


def _stable(value: Any) -> Any:
    """The response without what differs between any two runs (ids, times)."""
    if isinstance(value, dict):
        return {
            k: _pixels(v) if k == "b64_json" and v else _stable(v)
            for k, v in value.items()
            if k not in VOLATILE
        }
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


CASES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("get", "/healthz", None),
    ("get", "/v1/policy", None),
    ("post", "/v1/moderations/prompt", {"input": ["a cat on a sofa", f"a {REFUSED_WORD}"]}),
    ("post", "/v1/moderations/image", {"input": [b64(png("red")), b64(png("blue"))]}),
    ("post", "/v1/moderations/image", {"input": b64(png()), "return_images": True}),
    ("post", "/v1/moderations/image", {"input": "bm90IGFuIGltYWdl"}),  # not an image: 400
    ("post", "/v1/moderations", {"input": ["hello", f"{REFUSED_WORD} now"]}),
    ("post", "/v1/images/generations", {"prompt": "a red circle", "seed": 3, "n": 2}),
    ("post", "/v1/images/generations", {"prompt": f"a {REFUSED_WORD}", "seed": 3}),
    ("post", "/v1/images/generations", {"prompt": "a cat", "num_inference_steps": 99}),
]


@pytest.mark.parametrize(("method", "route", "body"), CASES, ids=[c[1] for c in CASES])
def test_every_route_answers_like_the_plain_service(
    ray_url: str, plain_url: str, method: str, route: str, body: dict[str, Any] | None
) -> None:
    answers = []
    for url in (plain_url, ray_url):
        with _client(url) as client:
            response = client.request(method, route, json=body)
        answers.append((response.status_code, response.json()))
    (plain_status, plain), (ray_status, served) = answers
    assert ray_status == plain_status, served
    assert _stable(served) == _stable(plain)  # scores, actions, rules, pixels


def test_the_layout_follows_the_ray_settings(ray_url: str) -> None:
    deployments = serve.status().applications[APP].deployments
    running = {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()}
    assert running == {"Ingress": 1, "Generator": 1, "Judge": 1, "PromptCheck": 2}


def test_auth_limits_and_metrics_are_the_plain_services(ray_url: str) -> None:
    with httpx.Client(base_url=ray_url, timeout=60) as anonymous:
        assert anonymous.post("/v1/moderations/prompt", json={"input": "x"}).status_code == 401
    with _client(ray_url) as client:
        too_many = client.post("/v1/moderations/image", json={"input": [b64(png())] * 5})
        client.post("/v1/moderations/prompt", json={"input": "a cat"})
        metrics = client.get("/metrics").text
    assert too_many.status_code == 400 and "give 1 to 4 images" in too_many.text
    assert 'safety_lora_decisions_total{action="allow",kind="prompt"}' in metrics


def test_the_edit_route_answers_like_the_plain_service(ray_url: str, plain_url: str) -> None:
    """An edit's images travel to the generator deployment, whose pipeline judges them: the
    test policy's static scores flag every image, so the input is refused, named, on both."""
    answers = []
    for url in (plain_url, ray_url):
        with _client(url) as client:
            response = client.post(
                "/v1/images/edits",
                files=[("image", ("in.png", png("blue"), "image/png"))],
                data={"prompt": "a cat", "seed": "3", "num_inference_steps": "4"},
            )
        answers.append((response.status_code, response.json()))
    (plain_status, plain), (ray_status, served) = answers
    assert plain_status == ray_status == 400
    assert (served["error"]["code"], served["error"]["param"]) == (
        "content_policy_violation",
        "image",
    )
    assert served["error"]["decision"]["input"] == "image"
    assert _stable(served) == _stable(plain)


def test_decisions_name_the_policy_and_replicas_audit_apart(ray_url: str, root: Path) -> None:
    with _client(ray_url) as client:
        image = client.post("/v1/moderations/image", json={"input": b64(png())}).json()
        made = client.post("/v1/images/generations", json={"prompt": "a blue square"}).json()
    expected = Policy.from_file(root / "first.yaml").sha256()
    assert image["results"][0]["decision"]["policy_sha256"] == expected
    assert made["safety"]["decisions"][0]["policy_sha256"] == expected
    files = sorted((root / "first").glob("audit.*.jsonl"))
    assert {f.name.split("-")[0] for f in files} == {"audit.ingress", "audit.generator"}
    merged = merge_audit_logs(files)
    assert [r["time"] for r in merged] == sorted(r["time"] for r in merged)
    ids = {r["request_id"] for r in merged}
    assert made["safety"]["request_id"] in ids and image["id"] in ids


def _judge_actors() -> list[Any]:
    names = ray.util.list_named_actors(all_namespaces=True)
    return [
        ray.get_actor(a["name"], namespace=a["namespace"])
        for a in names
        if "Judge" in a["name"] and a["name"].startswith("SERVE_REPLICA")
    ]


def test_a_judge_killed_mid_request_never_lets_an_image_through_unjudged(ray_url: str) -> None:
    (judge,) = _judge_actors()
    body = {"input": [b64(png(c)) for c in ("red", "green", "blue", "white")]}
    with _client(ray_url) as client, ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(client.post, "/v1/moderations/image", json=body) for _ in range(4)]
        ray.kill(judge, no_restart=False)
        responses = [f.result() for f in pending]
    decisions = [r["decision"] for resp in responses for r in resp.json()["results"]]
    assert all(resp.status_code == 200 for resp in responses)
    for d in decisions:
        # judged (blur at static 0.9), or failed closed (on_error: block) with the error named
        assert (d["action"], d["rule"]) in {("blur", "categories.sexual"), ("block", "on_error")}
        assert (d["rule"] == "on_error") == bool(d["errors"])
    # and the judge comes back: a later request is judged again
    deadline = time.monotonic() + 120
    while True:
        with _client(ray_url) as client:
            later = client.post("/v1/moderations/image", json=body).json()["results"][0]
        if later["decision"]["rule"] != "on_error" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert later["action"] == "blur"


def test_policy_reload_drops_no_request_and_never_mixes_policies(ray_url: str, root: Path) -> None:
    old = Policy.from_file(root / "first.yaml").sha256()
    stop = threading.Event()
    failed: list[tuple[int, str]] = []
    decisions: list[dict[str, Any]] = []

    def load() -> None:
        with _client(ray_url) as client:
            while not stop.is_set():
                r = client.post("/v1/moderations/image", json={"input": b64(png())})
                if r.status_code == 200:
                    decisions.append(r.json()["results"][0]["decision"])
                else:
                    failed.append((r.status_code, r.text[:300]))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        second = _settings(root, sexual=0.1, name="second")  # now every image is allowed
        serve.run(build_app(second), name=APP, route_prefix="/")
    finally:
        stop.set()
        worker.join()
    new = Policy.from_file(root / "second.yaml").sha256()
    assert new != old
    assert decisions and failed == []
    # each verdict is one policy's: its own scores and rule, or failed closed mid-reload
    expected = {old: ("blur", 0.9), new: ("allow", 0.1)}
    for d in decisions:
        if d["rule"] == "on_error":
            assert d["action"] == "block" and "PolicyMismatch" in " ".join(d["errors"])
        else:
            assert (d["action"], d["scores"]["sexual"]) == expected[d["policy_sha256"]]
    with _client(ray_url) as client:
        after = client.post("/v1/moderations/image", json={"input": b64(png())}).json()
    assert after["results"][0]["action"] == "allow"
    assert after["results"][0]["decision"]["policy_sha256"] == new


def test_ray_config_writes_the_serve_config_a_cluster_deploys(tmp_path: Path) -> None:
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "policy: strict\nray: {judge: {num_replicas: 3, num_gpus: 0.25}}\n", encoding="utf-8"
    )
    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(
        cli, ["serve", "ray-config", "--config", str(settings), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    (application,) = yaml.safe_load(out.read_text(encoding="utf-8"))["applications"]
    assert application["import_path"] == "safety_lora.service.ray_app:app_builder"
    assert application["args"]["policy"] == "strict"
    assert application["args"]["ray"]["judge"]["num_replicas"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("ray: {judge: {num_replicas: 0}}\n", encoding="utf-8")
    wrong = CliRunner().invoke(cli, ["serve", "ray-config", "-c", str(bad), "-o", str(out)])
    assert wrong.exit_code == 2 and "ray.judge.num_replicas" in wrong.output
