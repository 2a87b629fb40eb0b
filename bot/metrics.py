"""Prometheus metrics, one registry per app so tests and several apps in a process stay apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inbound = Counter(
            "kefu_inbound_messages",
            "Inbound messages by channel and result (accepted, duplicate, rejected)",
            ["channel", "result"],
            registry=self.registry,
        )
        self.outbound = Counter(
            "kefu_outbound_messages",
            "Outbound send attempts by channel and result (sent, retry, dead)",
            ["channel", "result"],
            registry=self.registry,
        )
        self.failures = Counter(
            "kefu_failures",
            "Errors by component (pipeline, outbox, channel)",
            ["component"],
            registry=self.registry,
        )
        self.outbox_depth = Gauge(
            "kefu_outbox_depth",
            "Outbox rows not yet sent, by status",
            ["status"],
            registry=self.registry,
        )
        self.receive_seconds = Histogram(
            "kefu_receive_seconds",
            "Time from a message arriving to its commit in the log",
            ["channel"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
