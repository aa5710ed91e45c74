"""The hub's Prometheus metrics, in a registry of its own so several hubs can live in one process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "HubMetrics"]


class HubMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge("wsgate_hub_connections", "Open WebSocket connections", registry=r)
        self.subscriptions = Gauge("wsgate_hub_subscriptions", "Active channel subscriptions", registry=r)
        self.messages_in = Counter(
            "wsgate_hub_messages_in", "Messages published (WebSocket and HTTP)", ["via"], registry=r
        )
        # Counted once per publish with the number of receivers, never per delivery: it sits on the hot path.
        self.messages_out = Counter(
            "wsgate_hub_messages_out", "Messages delivered to subscribers", registry=r
        )
        self.rejections = Counter(
            "wsgate_hub_rejections", "Refused handshakes and requests, by reason", ["reason"], registry=r
        )
        self.disconnects = Counter(
            "wsgate_hub_disconnects", "Closed connections, by close code", ["code"], registry=r
        )
        self.slow_consumers = Counter(
            "wsgate_hub_slow_consumers",
            "Connections closed because they did not read fast enough",
            registry=r,
        )
        self.publish_latency = Histogram(
            "wsgate_hub_publish_latency_seconds",
            "Time from receiving a publish to queueing its frame for every local subscriber",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
