"""Normal requests with abusive ones present: does one bad client slow everyone else down?

    .venv/bin/python benchmarks/service_abuse.py [--requests 40] [--rounds 3]
        [--results PATH | --no-results]

The service runs the embedded model on 127.0.0.1 (uvicorn in a thread of this process).
A normal client sends ``--requests`` generations (32x32, 12 steps) one after another and
records each latency. In the abusive rounds three more clients run at the same time, each
in a loop: oversized requests (``size: 4096x4096``, refused from the model's limits), slow
clients (a JSON body trickled a byte every 50 ms), and clients that ask for 400 steps and
disconnect after 0.3 s (their jobs are cancelled at the next step). Rounds alternate
quiet / abusive so load on the machine cancels out of the ratio; the table gives the normal
requests' p50 and p99 in each and the ratio (bar: p99 with abuse within 2x of without).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from _report import Report, add_arguments, first_paragraph
from rich.console import Console

from safety_lora.service import BackgroundServer, ServiceSettings, create_app

NAME = "service_abuse"
POLICY = """
name: bench-abuse
classifiers: [{kind: concept_world, unsafe: {sexual: [red]}}]
categories: {sexual: {threshold: 0.5, action: replace}}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def normal(url: str, n: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n):
            began = time.perf_counter()
            response = client.post(
                "/v1/images/generations", json={"prompt": "a blue circle", "seed": i}
            )
            latencies.append(time.perf_counter() - began)
            assert response.status_code == 200, response.text
    return latencies


def oversized(url: str, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            body = {"prompt": "a cat", "size": "4096x4096"}
            assert client.post("/v1/images/generations", json=body).status_code == 400


def slow_client(url: str, stop: threading.Event) -> None:
    host, port = url.removeprefix("http://").split(":")
    body = b'{"prompt": "a red circle", "num_inference_steps": 4}'
    while not stop.is_set():
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
            )
            for byte in body:
                if stop.is_set():
                    break
                sock.sendall(bytes([byte]))
                time.sleep(0.05)


def disconnecting(url: str, stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(httpx.TimeoutException):  # the point: it leaves
            httpx.post(
                f"{url}/v1/images/generations",
                json={"prompt": "a red square", "num_inference_steps": 400},
                timeout=0.3,
            )


ABUSERS: list[Callable[[str, threading.Event], None]] = [oversized, slow_client, disconnecting]


def round_(url: str, n: int, abusive: bool) -> list[float]:
    stop = threading.Event()
    threads = [threading.Thread(target=a, args=(url, stop), daemon=True) for a in ABUSERS]
    if abusive:
        for thread in threads:
            thread.start()
        time.sleep(0.5)
    try:
        return normal(url, n)
    finally:
        stop.set()
        for thread in threads if abusive else []:
            thread.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="normal requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/abusive pairs")
    add_arguments(parser, NAME)
    args = parser.parse_args()
    report = Report(NAME, "Service under abusive clients", first_paragraph(__doc__))
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        settings = ServiceSettings(
            policy=str(policy), max_steps=500, rate_limit_per_minute=0.0, max_concurrency=2
        )
        with BackgroundServer(create_app(settings)) as server:
            normal(server.url, 3)  # warm-up
            quiet: list[float] = []
            abused: list[float] = []
            for _ in range(args.rounds):
                quiet += round_(server.url, args.requests, abusive=False)
                abused += round_(server.url, args.requests, abusive=True)
    table = report.table(
        f"normal generations, {args.rounds} x {args.requests} per column",
        ["", "quiet", "with abusive clients", "ratio"],
        justify="right",
    )
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        a, b = percentile(quiet, q), percentile(abused, q)
        table.add_row(label, f"{a * 1e3:.0f} ms", f"{b * 1e3:.0f} ms", f"{b / a:.2f}x")
    table.add_row("mean", f"{statistics.mean(quiet) * 1e3:.0f} ms",
                  f"{statistics.mean(abused) * 1e3:.0f} ms", "")  # fmt: skip
    console.print(table.rich())
    ratio = percentile(abused, 0.99) / percentile(quiet, 0.99)
    verdict = f"bar (p99 within 2x): {'met' if ratio <= 2.0 else 'NOT met'} ({ratio:.2f}x)"
    table.note(verdict)
    console.print(verdict)
    report.save(args)


if __name__ == "__main__":
    main()
