"""Images are decoded and judged off the event loop: ``/healthz`` answers while one decodes.

The decode is held open by the test (an event, not a sleep), so the check does not depend on
the machine's speed: were the decode on the event loop, ``/healthz`` could not answer until
the decode was let go, and its request would time out.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from _service_helpers import b64, png, policy_yaml

from safety_lora.service import BackgroundServer, ServiceSettings, create_app
from safety_lora.service.routes import moderation

URL = "data:image/png;base64," + b64(png("red"))
BODIES: dict[str, dict[str, Any]] = {
    "/v1/moderations/image": {"input": URL},
    "/v1/moderations": {"input": [{"type": "image_url", "image_url": {"url": URL}}]},
}


@pytest.mark.parametrize("route", list(BODIES))
def test_healthz_answers_while_an_image_decodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    started, release = threading.Event(), threading.Event()
    decode = moderation.decode_b64_image

    def held(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(30)  # a decode that lasts until the test lets it go
        return decode(*args, **kwargs)

    monkeypatch.setattr(moderation, "decode_b64_image", held)
    settings = ServiceSettings(
        policy=str(policy_yaml(tmp_path / "policy.yaml", sexual=0.9)),
        audit_path=tmp_path / "audit.jsonl",
        generation=False,
        rate_limit_per_minute=0.0,
    )
    with (
        BackgroundServer(create_app(settings)) as server,
        httpx.Client(base_url=server.url, timeout=30) as worker,
        httpx.Client(base_url=server.url, timeout=5) as probe,
        ThreadPoolExecutor(1) as pool,
    ):
        pending = pool.submit(worker.post, route, json=BODIES[route])
        try:
            assert started.wait(30), "the decode never started"
            health = probe.get("/healthz")  # times out if the decode holds the event loop
            assert not pending.done()  # the decode is still in progress
        finally:
            release.set()
        response = pending.result()
    assert health.status_code == 200 and health.json()["in_flight"] == 1
    assert response.status_code == 200, response.text
