"""Shared test setup: one torch thread (tiny models are much faster on 2 cores), offline hubs,
closed-form edits solved at start-up cached in a temporary folder, not ``~/.cache``, and one
local Ray instance for the Ray tests of a process (``local_ray``)."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("SAFETY_LORA_CACHE", tempfile.mkdtemp(prefix="safety-lora-cache-"))
# Ray: no usage reports; and its token in the environment (inherited by the CLI subprocesses),
# so that no Ray start writes ~/.ray/auth_token (two xdist workers would race to create it)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

import torch

torch.set_num_threads(1)

#: The fixture of the tests that run on the shared local Ray instance.
LOCAL_RAY = "local_ray"


def _uses_ray(item: pytest.Item) -> bool:
    return LOCAL_RAY in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Ray tests run first, one after another, so that one Ray start serves them all; and
    under xdist the first batch a worker gets (a quarter of the tests over the workers, here
    a hundred) holds them all, so no two workers each start Ray and deploy the Serve app."""
    items[:] = [*(i for i in items if _uses_ray(i)), *(i for i in items if not _uses_ray(i))]


#: Whether ``local_ray`` started the Ray instance of this process (and so stops it).
_started_ray = False


@pytest.fixture(scope="module")
def local_ray() -> None:
    """Ray on this machine (small object store, no dashboard), started by the first Ray test;
    stopped after the last of a run of Ray tests (``pytest_runtest_teardown``)."""
    global _started_ray
    import ray

    if not ray.is_initialized():  # type: ignore[no-untyped-call]
        os.environ["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] = "60"  # 2 busy cores start slowly
        ray.init(
            num_cpus=6,  # logical: the Serve deployments' and Ray Data actors' shares, not cores
            object_store_memory=96 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
        _started_ray = True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Stop the Ray that ``local_ray`` started once no test needs it: the next test does not
    ask for it, and this test's module fixtures (a Serve app on it) are torn down, which they
    are when the next test is in another module. An idle Ray takes CPU from later tests."""
    global _started_ray
    yield
    if not _started_ray or (nextitem is not None and _uses_ray(nextitem)):
        return
    if nextitem is None or nextitem.getparent(pytest.Module) is not item.getparent(pytest.Module):
        import ray

        ray.shutdown()  # type: ignore[no-untyped-call]
        _started_ray = False


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    """Debian's headless Chromium driven by Selenium (flags that keep it off the network);
    a missing browser fails under CI, which installs it, and skips elsewhere."""
    import shutil

    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        missing = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI must run this test, not skip it")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"):  # fmt: skip
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
