"""The gateway's Prometheus metrics, served on the admin listener (``gateway.admin_listen``)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


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
        # Tunnel figures are plain integers, read when /metrics is scraped: a prometheus_client metric takes
        # a lock per change, and a proxied handshake changed four of them (docs/performance.md).
        self.open_tunnels = 0
        self.tunnel_bytes_up = 0  # by ended tunnels, counted once per tunnel, never per chunk
        self.tunnel_bytes_down = 0
        tunnels = Gauge("wsgate_gateway_tunnels", "Open WebSocket tunnels", registry=r)
        tunnels.set_function(lambda: self.open_tunnels)
        r.register(_TunnelBytes(self))
        self.refusals = Counter(
            "wsgate_gateway_refusals", "WebSocket upgrades refused, by reason", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _TunnelBytes(Collector):
    """``wsgate_gateway_tunnel_bytes_total{direction}`` from the integers of :class:`GatewayMetrics`."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "wsgate_gateway_tunnel_bytes", "Bytes relayed by ended tunnels", labels=["direction"]
        )
        family.add_metric(["up"], self._metrics.tunnel_bytes_up)
        family.add_metric(["down"], self._metrics.tunnel_bytes_down)
        yield family
