"""Normal requests with abusive ones present: does one bad client slow everyone else down?

    .venv/bin/python benchmarks/service_abuse.py [--requests 40] [--rounds 3]
        [--results PATH | --no-results]

The service runs the embedded model on 127.0.0.1 (uvicorn in a thread of this process,
default limits). A normal client sends ``--requests`` generations (32x32, 12 steps) one
after another and records each latency. In the abusive rounds six more clients run at the
same time, from a process of their own (as from another machine), each in a loop: oversized
requests (``size: 4096x4096``, refused from the model's limits), slow clients (a JSON body
trickled a byte every 50 ms), clients that ask for 400 steps and disconnect after 0.3 s
(their jobs are cancelled at the next step), slow connections (64 sockets each sending a
byte of a request head every second, dropped at ``header_timeout_s``), big headers (a 50 MB
``Authorization`` header, cut off at ``max_header_bytes``) and big texts (a 16 MB prompt and
100,000 content parts to ``/v1/moderations``, refused by the schema; 33 texts of 4,001
characters, refused by the settings). The two floods are paced at ``--abuse-rate`` attempts
a second each (default 10: one abusive client; an unpaced flood from many addresses is a
reverse proxy's to cut, see the threat model). Rounds alternate quiet / abusive so load on the
machine cancels out of the ratio; the first table gives the normal requests' p50 and p99 in
each and the ratio (bar: p99 with abuse within 2x of without), the second what the abusers
got.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


#: What each abuser got, by outcome (a status code, "closed"), over every abusive round.
OUTCOMES: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
_OUTCOMES_LOCK = threading.Lock()


def record(abuser: str, outcome: str | int) -> None:
    """Count one outcome of ``abuser`` (in the abusers' process)."""
    with _OUTCOMES_LOCK:
        OUTCOMES[abuser][str(outcome)] += 1


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
    body = b'{"prompt": "a red circle", "num_inference_steps": 4}'
    while not stop.is_set():
        with socket.create_connection(_address(url), timeout=30) as sock:
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


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def slow_connections(url: str, stop: threading.Event, count: int = 64) -> None:
    """``count`` sockets, each sending one byte of a request head a second (never complete);
    one the server closes is counted and replaced."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-slow: " + b"s" * 4096
    socks: list[tuple[socket.socket, int]] = []
    try:
        while not stop.is_set():
            while len(socks) < count:
                socks.append((socket.create_connection(_address(url), timeout=5), 0))
            kept = []
            for sock, sent in socks:
                try:
                    sock.sendall(head[sent % len(head) : sent % len(head) + 1])
                    kept.append((sock, sent + 1))
                except OSError:
                    record("slow connections (64 at a time)", "closed by the server")
                    sock.close()
            socks = kept
            stop.wait(1.0)
    finally:
        for sock, _ in socks:
            sock.close()


#: Attempts per second of each flooding abuser (``--abuse-rate``).
ABUSE_RATE = [10.0]


def paced(stop: threading.Event) -> Any:
    """Yield until ``stop``, at most ``ABUSE_RATE[0]`` times a second."""
    while not stop.is_set():
        began = time.perf_counter()
        yield
        stop.wait(max(0.0, 1.0 / ABUSE_RATE[0] - (time.perf_counter() - began)))


def big_header(url: str, stop: threading.Event) -> None:
    """A 50 MB ``Authorization`` header, written until the server stops reading."""
    chunk = b"a" * 65536
    for _ in paced(stop):
        with socket.create_connection(_address(url), timeout=5) as sock:
            sent = 0
            try:
                sock.sendall(b"POST /v1/moderations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ")
                while sent < 50 * 1024 * 1024 and not stop.is_set():
                    sock.sendall(chunk)
                    sent += len(chunk)
                answer = sock.recv(64)
            except OSError:
                answer = b""
            record("50 MB header", answer[9:12].decode() if answer else "closed by the server")


def big_text(url: str, stop: threading.Event) -> None:
    """Texts over the limits to ``/v1/moderations``: 16 MB, 100,000 parts, 33 x 4,001 chars."""
    bodies = [
        json.dumps({"input": "x" * 16_000_000}).encode(),
        json.dumps({"input": [{"type": "text", "text": "a"}] * 100_000}).encode(),
        json.dumps({"input": ["a" * 4001] * 33}).encode(),
    ]
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, _ in enumerate(paced(stop)):
            for body in bodies[i % len(bodies) : i % len(bodies) + 1]:
                response = client.post(
                    "/v1/moderations", content=body, headers={"content-type": "application/json"}
                )
                record("big texts", response.status_code)


ABUSERS: list[Callable[[str, threading.Event], None]] = [
    oversized,
    slow_client,
    disconnecting,
    slow_connections,
    big_header,
    big_text,
]


def abuse(url: str, stop: Any, results: Any, rate: float) -> None:
    """Every abuser in a thread of this process (started apart from the server's, as on
    another machine) until ``stop`` is set; then what they got goes to ``results``."""
    ABUSE_RATE[0] = rate
    done = threading.Event()
    threads = [threading.Thread(target=a, args=(url, done), daemon=True) for a in ABUSERS]
    for thread in threads:
        thread.start()
    results.put("started")
    stop.wait()
    done.set()
    for thread in threads:
        thread.join(30)
    results.put({name: dict(counts) for name, counts in OUTCOMES.items()})


def round_(url: str, n: int, abusive: bool, rate: float) -> list[float]:
    if not abusive:
        return normal(url, n)
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    process = context.Process(target=abuse, args=(url, stop, results, rate), daemon=True)
    process.start()
    results.get(timeout=120)
    time.sleep(0.5)
    try:
        return normal(url, n)
    finally:
        stop.set()
        for name, counts in results.get(timeout=120).items():
            for outcome, times in counts.items():
                OUTCOMES[name][outcome] += times
        process.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="normal requests per round")
    parser.add_argument("--rounds", type=int, default=3, help="quiet/abusive pairs")
    parser.add_argument(
        "--abuse-rate", type=float, default=10.0, help="attempts/s of each flooding abuser"
    )
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
                quiet += round_(server.url, args.requests, False, args.abuse_rate)
                abused += round_(server.url, args.requests, True, args.abuse_rate)
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
    abusers = report.table("what the new abusers got", ["abuser", "outcome", "times"])
    for abuser, outcomes in sorted(OUTCOMES.items()):
        for outcome, times in sorted(outcomes.items()):
            abusers.add_row(abuser, outcome, str(times))
    console.print(abusers.rich())
    report.save(args)


if __name__ == "__main__":
    main()
