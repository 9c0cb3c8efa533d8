"""Service load on loopback with the NudeNet classifier, and SafetyMiddleware overhead.

1. ``POST /v1/moderations/image`` (one 512x512 PNG per request): requests/s and p50/p99
   latency at client concurrency 1, 4 and 16 (``--requests`` per level; the server's own
   ``max_concurrency`` bounds the work, the rest waits in its queue).
2. A bare FastAPI route returning that PNG vs the same route behind ``SafetyMiddleware``
   (NudeNet policy, and a static no-op policy isolating the middleware's own cost):
   sequential requests, median latency and the ratio to the bare route.

Server and client share this process (uvicorn in a thread, httpx client on loopback).

    .venv/bin/python benchmarks/service_load.py [--requests 48] [--max-concurrency 2]
        [--results PATH | --no-results]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import skimage.data
from _report import Report, add_arguments, first_paragraph
from fastapi import FastAPI
from fastapi.responses import Response
from PIL import Image
from rich.console import Console

from safety_lora.middleware import GuardedRoute, SafetyMiddleware
from safety_lora.policies.schema import Policy
from safety_lora.service import BackgroundServer, ServiceSettings, create_app

NAME = "service_load"
NUDENET_POLICY = """
name: bench-nudenet
categories: {sexual: {threshold: 0.5, action: blur}}
classifiers: [{kind: nudenet}]
"""
STATIC_POLICY = """
name: bench-static
classifiers: [{kind: static, scores: {sexual: 0.0}}]
"""


def photo_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def load(
    url: str, body: dict[str, object], concurrency: int, n: int
) -> tuple[float, list[float], int]:
    """Send ``n`` requests with ``concurrency`` in flight; wall time, latencies, failures."""
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                queue.get_nowait()
                start = time.perf_counter()
                response = await client.post("/v1/moderations/image", json=body)
                latencies.append(time.perf_counter() - start)
                failures += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, failures


def sequential(url: str, path: str, n: int) -> list[float]:
    with httpx.Client(base_url=url, timeout=300) as client:
        client.post(path, json={"prompt": "a photo of an astronaut"})  # warm-up
        out = []
        for _ in range(n):
            start = time.perf_counter()
            response = client.post(path, json={"prompt": "a photo of an astronaut"})
            out.append(time.perf_counter() - start)
            response.raise_for_status()
        return out


def bench_service(
    folder: Path, image: bytes, args: argparse.Namespace, console: Console, report: Report
) -> None:
    policy = folder / "nudenet.yaml"
    policy.write_text(NUDENET_POLICY, encoding="utf-8")
    settings = ServiceSettings(
        policy=str(policy),
        generation=False,
        rate_limit_per_minute=0,
        max_concurrency=args.max_concurrency,
        queue_size=64,
        audit_path=folder / "audit.jsonl",
    )
    body = {"input": base64.b64encode(image).decode("ascii")}
    table = report.table(
        f"POST /v1/moderations/image, nudenet, max_concurrency={args.max_concurrency}",
        ["client concurrency", "requests", "req/s", "p50 ms", "p99 ms", "failures"],
        justify="right",
    )
    with BackgroundServer(create_app(settings)) as server:
        asyncio.run(load(server.url, body, 1, 2))  # warm-up: onnxruntime session, caches
        for concurrency in (1, 4, 16):
            wall, latencies, failures = asyncio.run(
                load(server.url, body, concurrency, args.requests)
            )
            table.add_row(
                str(concurrency),
                str(args.requests),
                f"{args.requests / wall:.1f}",
                f"{1e3 * percentile(latencies, 0.5):.1f}",
                f"{1e3 * percentile(latencies, 0.99):.1f}",
                str(failures),
            )
    console.print(table.rich())


def bench_middleware(
    folder: Path, image: bytes, args: argparse.Namespace, console: Console, report: Report
) -> None:
    def app() -> FastAPI:
        api = FastAPI()

        @api.post("/generate")
        async def generate() -> Response:
            return Response(image, media_type="image/png")

        return api

    variants: dict[str, object] = {"bare route": app()}
    for name, text in (
        ("middleware, nudenet", NUDENET_POLICY),
        ("middleware, static", STATIC_POLICY),
    ):
        path = folder / f"{name.split()[-1]}-mw.yaml"
        path.write_text(text, encoding="utf-8")
        variants[name] = SafetyMiddleware(
            app(), guard=Policy.from_file(path), routes=[GuardedRoute("/generate")]
        )
    medians = {}
    for name, asgi in variants.items():
        with BackgroundServer(asgi) as server:
            medians[name] = statistics.median(sequential(server.url, "/generate", args.requests))
    table = report.table(
        "SafetyMiddleware overhead (512x512 PNG response, sequential)",
        ["variant", "median ms", "vs bare", "added ms"],
        justify="right",
    )
    bare = medians["bare route"]
    for name, median in medians.items():
        table.add_row(
            name, f"{1e3 * median:.2f}", f"{median / bare:.2f}x", f"{1e3 * (median - bare):.2f}"
        )
    console.print(table.rich())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement")
    parser.add_argument("--max-concurrency", type=int, default=2, help="server worker slots")
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "Service load and middleware overhead", first_paragraph(__doc__))
    console = Console()
    image = photo_png()
    with tempfile.TemporaryDirectory() as tmp:
        bench_service(Path(tmp), image, args, console, report)
        bench_middleware(Path(tmp), image, args, console, report)
    report.save(args)


if __name__ == "__main__":
    main()
