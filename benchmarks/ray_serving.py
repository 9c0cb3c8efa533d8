"""The service on Ray Serve vs the plain service, and batch moderation on Ray Data vs the CLI.

Everything on this machine, on 127.0.0.1, with the NudeNet policy:

1. ``POST /v1/moderations/image`` (one 512x512 photo per request) at client concurrency 4:
   requests/s and p50/p99 latency for the plain service and for the Ray Serve application
   with 1 and with 2 judge replicas (two applications deployed side by side, so rounds
   interleave plain / ray-1 / ray-2 / plain / ... without redeploying).
2. The Ray ingress's own overhead at concurrency 1: ``POST /v1/moderations/prompt`` (no
   image classifier) and one image, plain vs ray-1, median latency and the ratio.
3. Batch moderation of ``--images`` files (photo crops): images/s of
   ``safety-lora moderate DIR --json`` vs ``safety-lora moderate --ray DIR --out F``
   (fresh processes, Ray start-up included, ``--batch-rounds`` A/B pairs).

    .venv/bin/python benchmarks/ray_serving.py [--requests 48] [--rounds 3] [--images 2000]
        [--results PATH | --no-results]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray
from PIL import Image
from ray import serve
from rich.console import Console

from safety_lora.service import BackgroundServer, ServiceSettings, create_app
from safety_lora.service.ray_app import build_app

sys.path.insert(0, str(Path(__file__).parent))
from _report import Report, add_arguments, first_paragraph
from service_load import NUDENET_POLICY, percentile, photo_png

NAME = "ray_serving"
CONCURRENCY = 4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _load(url: str, body: dict[str, object], requests: int, concurrency: int) -> dict:
    """``requests`` POSTs, ``concurrency`` at a time: requests/s, p50 and p99 in ms."""
    latencies: list[float] = []
    queue = list(range(requests))
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def worker() -> None:
            while queue:
                queue.pop()
                began = time.perf_counter()
                response = await client.post("/v1/moderations/image", json=body)
                response.raise_for_status()
                latencies.append((time.perf_counter() - began) * 1e3)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return {
        "rps": requests / wall,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


def _sequential(url: str, route: str, body: dict[str, object], n: int) -> float:
    """Median latency (ms) of ``n`` requests one after another."""
    times = []
    with httpx.Client(base_url=url, timeout=300) as client:
        for _ in range(n):
            began = time.perf_counter()
            client.post(route, json=body).raise_for_status()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times)


def serving(args: argparse.Namespace, policy: Path, console: Console, report: Report) -> None:
    body = {"input": base64.b64encode(photo_png()).decode("ascii")}
    base = {
        "policy": str(policy),
        "generation": False,
        "max_concurrency": 2,
        "queue_size": 64,
        "rate_limit_per_minute": 0.0,
    }
    plain = create_app(ServiceSettings(**base))
    port = _port()
    ray.init(num_cpus=8, object_store_memory=256 * 1024**2, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    urls = {}
    for judges in (1, 2):
        settings = ServiceSettings(
            **base, ray={"app_name": f"judges-{judges}", "judge": {"num_replicas": judges}}
        )
        serve.run(build_app(settings), name=f"judges-{judges}", route_prefix=f"/j{judges}")
        urls[f"ray, {judges} judge{'s' if judges > 1 else ''}"] = (
            f"http://127.0.0.1:{port}/j{judges}"
        )
    try:
        with BackgroundServer(plain) as server:
            setups = {"plain service": server.url, **urls}
            for url in setups.values():  # warm every path once
                asyncio.run(_load(url, body, CONCURRENCY, CONCURRENCY))
            results: dict[str, list[dict]] = {name: [] for name in setups}
            for _ in range(args.rounds):
                for name, url in setups.items():
                    results[name].append(asyncio.run(_load(url, body, args.requests, CONCURRENCY)))
            table = report.table(
                f"image moderation, concurrency {CONCURRENCY}, "
                f"{args.rounds} x {args.requests} requests per row, interleaved",
                ["setup", "req/s", "vs plain", "p50 ms", "p99 ms"],
                justify="right",
            )
            plain_rps = statistics.median(r["rps"] for r in results["plain service"])
            for name, rows in results.items():
                rps = statistics.median(r["rps"] for r in rows)
                table.add_row(
                    name,
                    f"{rps:.2f}",
                    f"{rps / plain_rps:.2f}x",
                    f"{statistics.median(r['p50'] for r in rows):.0f}",
                    f"{statistics.median(r['p99'] for r in rows):.0f}",
                )
            console.print(table.rich())

            overhead = report.table(
                "ingress overhead at concurrency 1 (median ms, interleaved)",
                ["request", "plain", "ray", "ratio"],
                justify="right",
            )
            ray_url = urls["ray, 1 judge"]
            cases = {
                "prompt check": ("/v1/moderations/prompt", {"input": "a cat on a sofa"}),
                "one image": ("/v1/moderations/image", body),
            }
            for label, (route, payload) in cases.items():
                a, b = [], []
                for _ in range(args.rounds):
                    a.append(_sequential(server.url, route, payload, 20))
                    b.append(_sequential(ray_url, route, payload, 20))
                pa, pb = statistics.median(a), statistics.median(b)
                overhead.add_row(label, f"{pa:.1f}", f"{pb:.1f}", f"{pb / pa:.2f}x")
            console.print(overhead.rich())
    finally:
        serve.shutdown()
        ray.shutdown()


def batch(
    args: argparse.Namespace, policy: Path, root: Path, console: Console, report: Report
) -> None:
    folder = root / "images"
    folder.mkdir()
    photo = Image.open(io.BytesIO(photo_png())).convert("RGB")
    for i in range(args.images):
        x, y = (i * 37) % 256, (i * 91) % 256
        photo.crop((x, y, x + 256, y + 256)).save(folder / f"{i:05d}.png")
    cli = str(Path(sys.executable).with_name("safety-lora"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    commands = {
        "moderate (one process)": [cli, "moderate", str(folder), "--json", "-p", str(policy)],
        "moderate --ray (2 actors)": [
            cli, "moderate", "--ray", str(folder), "--out", str(root / "out.parquet"),
            "-p", str(policy), "--actors", "2",
        ],
    }  # fmt: skip
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.batch_rounds):
        for name, command in commands.items():
            (root / "out.parquet").unlink(missing_ok=True)
            began = time.perf_counter()
            done = subprocess.run(command, capture_output=True, env=env, check=False)
            seconds[name].append(time.perf_counter() - began)
            if done.returncode not in (0, 1):
                raise RuntimeError(f"{name} failed: {done.stderr.decode()[-2000:]}")
    table = report.table(
        f"batch moderation of {args.images} images (wall, process start-up in)",
        ["command", "seconds", "images/s", "vs one process"],
        justify="right",
    )
    base = statistics.median(seconds["moderate (one process)"])
    for name, values in seconds.items():
        s = statistics.median(values)
        table.add_row(name, f"{s:.1f}", f"{args.images / s:.1f}", f"{base / s:.2f}x")
    console.print(table.rich())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-rounds", type=int, default=1)
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "Ray Serve and Ray Data vs one process", first_paragraph(__doc__))
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        policy = root / "policy.yaml"
        policy.write_text(NUDENET_POLICY, encoding="utf-8")
        serving(args, policy, console, report)
        batch(args, policy, root, console, report)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.save(args)


if __name__ == "__main__":
    main()
