"""The hub's HTTP surface (DESIGN.md §4-5): ``/ws``, ``/api/publish``, ``/api/presence``, ``/healthz``,
``/metrics``. Handlers translate between aiohttp and :class:`~wsgate.hub.core.Hub`; decisions live there.

WebSocket upgrades do not go through aiohttp: :class:`HubUpgrades` claims ``/ws`` (and ``/echo``) at the
listener's front (:mod:`wsgate.front`), which hands their connections to :mod:`wsgate.hub.websocket` and
:mod:`wsgate.hub.echo` with the request head. The aiohttp routes for those paths only catch what the front
cannot see (a request after another on a kept-alive connection, a percent-encoded path) and give it to the
same acceptor (:func:`~wsgate.front.take_over`); every method reaches them, so a POST to ``/ws`` is told it is
not an upgrade (426), not just 405.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from wsgate.errors import AuthError, ProtocolError
from wsgate.front import Acceptor, OnEnd, take_over
from wsgate.http_head import RequestHead
from wsgate.http_server import handshake_guard
from wsgate.hub import echo, idempotency, protocol, websocket
from wsgate.hub.core import Hub
from wsgate.hub.echo import EchoEndpoint
from wsgate.hub.metrics import CONTENT_TYPE_LATEST
from wsgate.hub.websocket import WebSocketEndpoint

HUB = web.AppKey("hub", Hub)

# Room for the publish envelope ({"channel": …, "data": …}) around a maximal message.
ENVELOPE_ALLOWANCE = 4096


class HubUpgrades:
    """The listener's upgrade handler (:class:`~wsgate.front.UpgradeHandler`): ``/ws``, and ``/echo`` when
    ``[hub] echo = true`` (test-only)."""

    def __init__(self, hub: Hub) -> None:
        self.websocket = WebSocketEndpoint(hub)
        self.echo = EchoEndpoint(hub) if hub.config.echo else None
        self._paths: dict[str, Acceptor] = {websocket.PATH: self.websocket}
        if self.echo is not None:
            self._paths[echo.PATH] = self.echo

    def claims(self, path: str) -> bool:
        return path in self._paths

    def recall(self, path: str, raw: bytes, transport: asyncio.Transport, data: bytes) -> bool:
        return False  # every hub handshake is checked in full: its credential is the client's own

    def accept(
        self, head: RequestHead, transport: asyncio.Transport, data: bytes, on_end: OnEnd | None
    ) -> None:
        self._paths[head.path].accept(head, transport, data, on_end)


def build_app(hub: Hub, upgrades: HubUpgrades) -> web.Application:
    app = web.Application(
        middlewares=[handshake_guard],
        client_max_size=_max_body(hub),
    )
    app[HUB] = hub
    app.router.add_route("*", websocket.PATH, _taken_over(upgrades.websocket))
    app.router.add_post("/api/publish", publish)
    app.router.add_get("/api/presence", presence)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if upgrades.echo is not None:  # test-only: [hub] echo = true for the Autobahn suite (wsgate.hub.echo)
        app.router.add_route("*", echo.PATH, _taken_over(upgrades.echo))
    return app


def _taken_over(acceptor: Acceptor) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await take_over(request, acceptor)

    return handle


def _max_body(hub: Hub) -> int:
    return hub.config.limits.max_message + ENVELOPE_ALLOWANCE


def _api_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def publish(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    limits = hub.config.limits
    try:
        grant = hub.publishers.verify_publisher(request.headers.get("Authorization"), None)
    except AuthError as exc:
        hub.reject(exc.reason)
        return _api_error(exc.status, "unauthorized" if exc.status == 401 else "forbidden", exc.message)
    try:
        key = idempotency.parse_key(request.headers.getall(idempotency.HEADER, ()))
    except idempotency.IdempotencyError as exc:
        return _api_error(exc.status, exc.code, exc.message)
    too_large = _api_error(413, "too_large", f"body larger than {_max_body(hub)} bytes")
    if request.content_length is not None and request.content_length > _max_body(hub):
        return too_large
    try:
        # The body must arrive as promptly as the head did: a trickled body would hold the connection.
        async with asyncio.timeout(limits.handshake_timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return too_large
    except TimeoutError:
        return _api_error(408, "timeout", "request body not received in time")
    try:
        channel, data = _parse_publish_body(raw)
    except ProtocolError as exc:
        return _api_error(400, "bad_request", exc.message)
    if len(data.encode()) > limits.max_message:
        return _api_error(
            413, "too_large", f"data larger than limits.max_message ({limits.max_message} bytes)"
        )
    if not grant.can_publish(channel):
        hub.reject("channel")
        return _api_error(403, "forbidden", f"this credential may not publish on {channel}")

    async def apply() -> idempotency.Answer:
        published = await hub.publish(channel, data, via="http")
        return {"channel": published.channel, "epoch": published.epoch, "offset": published.offset}

    # With an Idempotency-Key, a retry gets the first answer and publishes nothing (docs/hub.md).
    scope = f"{grant.kind}:{grant.subject}"
    digest = idempotency.fingerprint(channel, data) if key is not None else b""
    try:
        answer, replayed = await hub.idempotency.run(scope, key, digest, apply)
    except idempotency.IdempotencyError as exc:
        return _api_error(exc.status, exc.code, exc.message)
    return web.json_response(answer, headers={"Idempotent-Replayed": "true"} if replayed else None)


def _parse_publish_body(raw: bytes) -> tuple[str, str]:
    body: Any = protocol.parse_json(raw)
    if not isinstance(body, dict) or "data" not in body or set(body) - {"channel", "data"}:
        raise ProtocolError('body must be {"channel": "<name>", "data": <json>}')
    return protocol.validate_channel(body.get("channel")), protocol.encode_json(body["data"])


async def presence(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    try:
        channel = protocol.validate_channel(request.query.get("channel"))
    except ProtocolError as exc:
        return _api_error(400, "bad_request", exc.message)
    try:
        hub.publishers.verify_publisher(request.headers.get("Authorization"), channel)
    except AuthError as exc:
        hub.reject(exc.reason)
        return _api_error(exc.status, "unauthorized" if exc.status == 401 else "forbidden", exc.message)
    clients = [
        {"id": entry.client_id, "subject": entry.subject, "connected_at": entry.connected_at}
        for entry in await hub.presence(channel)
    ]
    return web.json_response({"channel": channel, "clients": clients})


async def healthz(request: web.Request) -> web.Response:
    if request.app[HUB].draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[HUB].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
