"""``safety-lora serve --ray`` as a user runs it: a local Ray instance of its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _service_helpers import free_port, policy_yaml

pytestmark = pytest.mark.slow  # make test-fast leaves it out


def test_cli_serve_ray_serves_until_interrupted(tmp_path: Path) -> None:
    """``safety-lora serve --ray`` on a local Ray instance of its own: answers, then on
    SIGINT shuts Serve and Ray down and exits."""
    port = free_port()
    policy = policy_yaml(tmp_path / "policy.yaml", sexual=0.9)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    }
    command = [str(Path(sys.executable).with_name("safety-lora")), "serve", "--ray"]
    command += ["--no-generation", "--port", str(port), "--policy", str(policy)]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "serve --ray did not start"
            time.sleep(0.5)
        assert health.json()["policy"] == "test-replace"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0, log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
