"""The gateway's Prometheus metrics, served on the admin listener (``gateway.admin_listen``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "wsgate_gateway_requests",
            "Requests and WebSocket upgrades by route and final status (101 counts when a tunnel ends)",
            ["route", "status"],
            registry=r,
        )
        self.connections = Gauge(
            "wsgate_gateway_connections", "Requests in flight, open tunnels included", registry=r
        )
        self.tunnels = Gauge("wsgate_gateway_tunnels", "Open WebSocket tunnels", registry=r)
        # Counted once per tunnel when it ends, never per chunk: relaying is the hot path.
        self.tunnel_bytes = Counter(
            "wsgate_gateway_tunnel_bytes", "Bytes relayed by ended tunnels", ["direction"], registry=r
        )
        self.refusals = Counter(
            "wsgate_gateway_refusals", "WebSocket upgrades refused, by reason", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
