"""Prometheus metrics of one service app, in its own registry (apps never share counters)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Requests, latency, decisions, rejections, audit failures, and the admission queue."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "safety_lora_http_requests",
            "HTTP requests answered, by route and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "safety_lora_http_request_seconds",
            "Time to answer a request, by route",
            ["route"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "safety_lora_decisions",
            "Policy decisions, by kind (prompt, image) and action",
            ["kind", "action"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "safety_lora_rejected_requests",
            "Requests or connections refused before any work "
            "(auth, rate, body_limit, busy, connections, read_timeout)",
            ["reason"],
            registry=self.registry,
        )
        self.audit_failures = Counter(
            "safety_lora_audit_failures",
            "Requests refused with 503 because the audit log could not be written",
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "safety_lora_in_flight_requests", "Requests being worked on", registry=self.registry
        )
        self.queued = Gauge(
            "safety_lora_queued_requests", "Requests waiting for a worker", registry=self.registry
        )

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
