"""``safety-lora serve --ray`` as a user runs it: default settings, a local Ray instance of
its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _service_helpers import free_port

pytestmark = pytest.mark.slow  # make test-fast leaves it out


def test_cli_serve_ray_with_default_settings_answers_then_stops_on_sigint(tmp_path: Path) -> None:
    """``safety-lora serve --ray --policy strict`` as a user runs it: no settings file, a
    local Ray instance of its own on this machine's CPUs (on two, fewer than the default
    layout's shares add up to: they are scaled to fit), the embedded model. It generates and
    judges a prompt, then on SIGINT shuts Serve and Ray down and exits."""
    port = free_port()
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",  # a busy two-core machine starts slowly
    }
    command = [str(Path(sys.executable).with_name("safety-lora")), "serve", "--ray"]
    command += ["--port", str(port), "--policy", "strict"]
    log = tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                health = httpx.get(f"{url}/healthz", timeout=2)
                if health.status_code == 200 and health.json()["model"] == "loaded":
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "serve --ray did not start"
            time.sleep(0.5)
        assert health.json()["policy"] == "strict"
        body = {"prompt": "a red circle", "num_inference_steps": 2}
        generated = httpx.post(f"{url}/v1/images/generations", json=body, timeout=120)
        assert generated.status_code == 200, generated.text
        assert len(generated.json()["data"]) == 1
        judged = httpx.post(
            f"{url}/v1/moderations/prompt", json={"input": "explicit sex, nudity"}, timeout=60
        )
        assert judged.status_code == 200, judged.text
        assert judged.json()["results"][0]["action"] == "refuse"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0, log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url}/healthz", timeout=2)
