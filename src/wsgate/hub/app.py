"""The hub's HTTP surface (DESIGN.md §4–5): ``/ws``, ``/api/publish``, ``/api/presence``, ``/healthz``,
``/metrics``. Handlers translate between aiohttp and :class:`~wsgate.hub.core.Hub`; decisions live there."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from wsgate.errors import AuthError, HandshakeError, ProtocolError
from wsgate.http_server import handshake_guard
from wsgate.hub import idempotency, protocol
from wsgate.hub.core import CLOSE_GRACE, Draining, Hub, Overloaded
from wsgate.hub.echo import EchoEndpoint
from wsgate.hub.metrics import CONTENT_TYPE_LATEST

access_log = logging.getLogger("wsgate.access")

HUB = web.AppKey("hub", Hub)

# Room for the publish envelope ({"channel": …, "data": …}) around a maximal message.
ENVELOPE_ALLOWANCE = 4096


def build_app(hub: Hub) -> web.Application:
    app = web.Application(
        middlewares=[handshake_guard],
        client_max_size=_max_body(hub),
    )
    app[HUB] = hub
    # Every method reaches the handler, so a POST to /ws is told it is not an upgrade (426), not just 405.
    app.router.add_route("*", "/ws", websocket)
    app.router.add_post("/api/publish", publish)
    app.router.add_get("/api/presence", presence)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    if hub.config.echo:  # test-only: [hub] echo = true for the Autobahn suite (wsgate.hub.echo)
        EchoEndpoint(hub).mount(app)
    return app


def _max_body(hub: Hub) -> int:
    return hub.config.limits.max_message + ENVELOPE_ALLOWANCE


def _refuse(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # A plain one-line reason: never the request's headers, query or credential.
    return web.Response(status=status, text=message + "\n", headers=headers)


def _peer(request: web.Request) -> str:
    return request.remote or "-"


async def websocket(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    try:
        grant = hub.admit(request.method, request.headers)
    except HandshakeError as exc:
        return _rejected(
            hub,
            request,
            exc.status,
            "not_websocket" if exc.status == 426 else "bad_handshake",
            exc.message,
            exc.headers,
        )
    except AuthError as exc:
        return _rejected(hub, request, exc.status, exc.reason, exc.message)
    except Overloaded as exc:
        return _rejected(hub, request, 429, "too_many_connections", str(exc), {"Retry-After": "5"})
    except Draining as exc:
        return _rejected(hub, request, 503, "draining", str(exc))

    limits = hub.config.limits
    ws = web.WebSocketResponse(
        # No permessage-deflate: hub messages are small events, compression would cost CPU per subscriber
        # (frames could no longer be encoded once) and open the door to decompression bombs.
        compress=False,
        max_msg_size=limits.max_message,
        heartbeat=limits.ping_interval,
        timeout=CLOSE_GRACE,
        decode_text=False,
        autoclose=False,  # Hub.run_session answers close frames (close_reply_code)
    )
    hub.reserve_handshake()
    try:
        await ws.prepare(request)
    finally:
        hub.release_handshake()
    transport = request.transport
    assert transport is not None  # prepare() succeeded, so the connection is open
    session = hub.open_session(ws, transport, grant)
    access_log.info("ws open id=%s subject=%s peer=%s", session.id, grant.subject, _peer(request))
    try:
        await hub.run_session(session)
    finally:
        # A close we started records its own code; otherwise aiohttp's (the peer's, or 1006).
        code = session.close_code or ws.close_code
        reason = session.close_reason or ("too large" if code == 1009 else "")
        hub.metrics.disconnects.labels(str(code)).inc()
        access_log.info(
            "ws close id=%s subject=%s code=%s reason=%s duration=%.1fs",
            session.id,
            grant.subject,
            code,
            reason or "-",
            time.monotonic() - session.opened,
        )
    return ws


def _rejected(
    hub: Hub,
    request: web.Request,
    status: int,
    reason: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    hub.reject(reason)
    access_log.info("ws reject status=%d reason=%s peer=%s", status, reason, _peer(request))
    return _refuse(status, message, headers)


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
