"""One request cannot take the service down: per-model limits, deadlines, disconnects, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from _service_helpers import free_port, policy_yaml

from safety_lora.service import BackgroundServer, ServiceSettings, create_app
from safety_lora.testing import tiny_pipeline


class SlowUNet:
    """Counts the UNet's calls and makes each take ``seconds``."""

    def __init__(self, pipe: Any, seconds: float) -> None:
        self.calls = 0
        self.seconds = seconds
        self.handle = pipe.unet.register_forward_pre_hook(self._hook)

    def _hook(self, module: Any, args: Any) -> None:
        self.calls += 1
        time.sleep(self.seconds)


@contextmanager
def served(tmp_path: Path, pipe: Any, **settings: Any) -> Iterator[httpx.Client]:
    values: dict[str, Any] = {
        "policy": str(policy_yaml(tmp_path / "policy.yaml", sexual=0.0)),
        "generation": True,
        **settings,
    }
    app = create_app(ServiceSettings(**values), pipeline=pipe)
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def generate(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/v1/images/generations", json={"prompt": "a cat", "seed": 0, **body})


def test_limits_come_from_the_model_and_name_themselves(tmp_path: Path) -> None:
    with served(tmp_path, tiny_pipeline(), max_steps=8) as client:  # native size 32x32
        huge = generate(client, size="4096x4096", num_inference_steps=2)
        double = generate(client, size="64x64", num_inference_steps=2)
        steps = generate(client, num_inference_steps=500)
        many = generate(client, n=5, num_inference_steps=2)
        native = generate(client, size="32x32", num_inference_steps=2)
    assert huge.status_code == double.status_code == steps.status_code == many.status_code == 400
    assert "over this model's limit of 1024" in huge.json()["error"]["message"]
    assert "native size is 32x32" in double.json()["error"]["message"]
    assert "num_inference_steps=500 is over this server's limit of 8" in steps.text
    assert "n=5 is over this server's limit of 4" in many.json()["error"]["message"]
    assert native.status_code == 200
    with served(tmp_path, tiny_pipeline(), max_generation_pixels=64 * 64) as client:
        assert generate(client, size="64x64", num_inference_steps=2).status_code == 200


def test_a_deadline_stops_the_generation_between_steps(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    slow = SlowUNet(pipe, 0.05)
    with served(tmp_path, pipe, request_timeout_s=0.5, max_steps=200) as client:
        began = time.monotonic()
        late = generate(client, num_inference_steps=200)
        took = time.monotonic() - began
        calls = slow.calls
        slow.seconds = 0.0
        after = generate(client, num_inference_steps=2)  # the model is free again
    assert late.status_code == 504
    assert late.json()["error"]["code"] == "generation_deadline"
    assert "deadline of 0.5 s" in late.json()["error"]["message"]
    assert took < 5 and calls < 60  # 200 steps x 2 (CFG) would be 400 calls
    assert after.status_code == 200


def test_a_client_that_disconnects_cancels_its_job(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    slow = SlowUNet(pipe, 0.05)
    with served(tmp_path, pipe, max_steps=200) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/v1/images/generations",
                json={"prompt": "a cat", "num_inference_steps": 200},
                timeout=0.5,
            )
        time.sleep(0.6)  # the watcher polls every 0.1 s; the next step then stops
        stopped_at = slow.calls
        time.sleep(0.5)
        assert slow.calls == stopped_at  # no more UNet calls: the job was cancelled
        slow.seconds = 0.0
        assert generate(client, num_inference_steps=2).status_code == 200
    assert stopped_at < 60


def test_new_work_is_refused_while_draining(tmp_path: Path) -> None:
    pipe = tiny_pipeline()
    slow = SlowUNet(pipe, 0.05)
    settings = ServiceSettings(
        policy=str(policy_yaml(tmp_path / "policy.yaml", sexual=0.0)),
        generation=True,
        max_steps=200,
        shutdown_timeout_s=3,
    )
    server = BackgroundServer(create_app(settings, pipeline=pipe)).start()
    client = httpx.Client(base_url=server.url, timeout=30)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(generate, client, num_inference_steps=200)
        while slow.calls == 0:
            time.sleep(0.01)
        began = time.monotonic()
        server.stop(wait=False)
        answer = in_flight.result()
    assert server.join(15)
    client.close()
    assert time.monotonic() - began < 10
    assert answer.status_code == 503  # 200 slow steps would take 20 s; the grace was 1 s
    assert answer.json()["error"]["code"] == "generation_shutdown"


def test_sigterm_drains_a_real_server_and_exits_in_bounded_time(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "serve.yaml"
    policy = policy_yaml(tmp_path / "policy.yaml", sexual=0.0)
    config.write_text(
        f"policy: {policy}\nport: {port}\nshutdown_timeout_s: 3\nmax_steps: 1000\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from safety_lora.cli import main; main()",
            "serve",
            "-c",
            str(config),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json()["model"] == "loaded":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            pytest.fail("the server did not start")
        answer: list[httpx.Response] = []
        body = {"prompt": "a red circle", "num_inference_steps": 500}  # seconds of work
        worker = threading.Thread(
            target=lambda: answer.append(
                httpx.post(f"{url}/v1/images/generations", json=body, timeout=60)
            )
        )
        worker.start()
        while httpx.get(f"{url}/healthz", timeout=5).json()["in_flight"] == 0:
            time.sleep(0.05)
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=20)
        worker.join(20)
    finally:
        if process.poll() is None:
            process.kill()
        output, _ = process.communicate(timeout=20)
    assert code in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal once done
    # The grace (1 s) ends before the 500 steps do: the job is stopped, not finished.
    assert answer and answer[0].status_code == 503, output
    assert answer[0].json()["error"]["code"] == "generation_shutdown"
