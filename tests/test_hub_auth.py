"""Handshake admission on a real hub: every rejection status, static and signed tokens, Origin look-alikes."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import replace

import aiohttp
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    KEY_NEW,
    KEY_OLD,
    KIOSK_TOKEN,
    ORIGIN,
    TIMEOUT,
    Connect,
    StartHub,
    bearer,
    kiosk_headers,
    make_hub_config,
    receive_json,
    subscribe,
    ws_url,
)
from tests.wsraw import raw_websocket
from wsgate.auth.tokens import mint_token
from wsgate.config import SigningConfig
from wsgate.hub.server import HubServer
from wsgate.secret import Secret


def upgrade_headers(**extra: str) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    headers.update(extra)
    return headers


async def handshake_status(
    http: aiohttp.ClientSession, server: HubServer, headers: dict[str, str], method: str = "GET"
) -> tuple[int, str]:
    async with http.request(method, server.url + "/ws", headers=headers) as response:
        return response.status, await response.text()


def signed(key: str = KEY_NEW, kid: str = "2026-11", **claims: object) -> str:
    return mint_token(
        key=Secret(key),
        kid=kid,
        subject=str(claims.pop("subject", "kiosk-7")),
        ttl=float(claims.pop("ttl", 60.0)),  # type: ignore[arg-type]
        subscribe=claims.pop("subscribe", ("kiosks",)),  # type: ignore[arg-type]
        publish=claims.pop("publish", ()),  # type: ignore[arg-type]
        audience=claims.pop("audience", None),  # type: ignore[arg-type]
        now=claims.pop("now", None),  # type: ignore[arg-type]
    )


async def test_valid_static_token_and_origin_connect(hub: HubServer, connect: Connect) -> None:
    ws = await connect(hub)
    answer = await subscribe(ws, "kiosks")
    assert answer["offset"] == 0
    assert answer["recovered"] is False


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": ORIGIN}, 401),  # no credential
        ({"Origin": ORIGIN, "Authorization": "Bearer wrong-token"}, 401),
        ({"Origin": ORIGIN, "Authorization": "Basic a2lvc2s6cGFzcw=="}, 401),
        ({"Authorization": f"Bearer {KIOSK_TOKEN}"}, 403),  # no Origin, not allowed by default
        ({"Origin": "https://evil.example.com", "Authorization": f"Bearer {KIOSK_TOKEN}"}, 403),
    ],
)
async def test_rejections_answer_the_documented_status_and_never_echo(
    hub: HubServer, http: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    code, body = await handshake_status(http, hub, upgrade_headers(**headers))
    assert code == status
    assert KIOSK_TOKEN not in body
    assert "wrong-token" not in body
    assert "evil" not in body


async def test_plain_http_get_on_ws_is_426_and_bad_upgrade_is_400(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    status, _ = await handshake_status(http, hub, kiosk_headers())
    assert status == 426
    status, _ = await handshake_status(http, hub, upgrade_headers(**kiosk_headers()), method="POST")
    assert status == 400
    status, _ = await handshake_status(
        http, hub, upgrade_headers(**kiosk_headers(), **{"Sec-WebSocket-Key": "x"})
    )
    assert status == 400


@pytest.mark.parametrize(
    "origin",
    [
        "https://kiosk.example.org.evil.com",
        "https://evil-kiosk.example.org",
        "http://kiosk.example.org",
        "https://kiosk.example.org:8443",
        "null",
        "https://example.net",  # the wildcard covers subdomains only
        "https://kiosk.example.org@evil.com",
    ],
)
async def test_origin_look_alikes_are_forbidden(
    hub: HubServer, http: aiohttp.ClientSession, origin: str
) -> None:
    status, _ = await handshake_status(http, hub, upgrade_headers(**kiosk_headers(origin=origin)))
    assert status == 403


@pytest.mark.parametrize(
    "origin",
    [
        "https://KIOSK.example.ORG",
        "https://kiosk.example.org.",
        "https://kiosk.example.org:443",
        "https://a.b.example.net",
    ],
)
async def test_origin_normalisation_accepts_equivalent_forms(
    hub: HubServer, connect: Connect, origin: str
) -> None:
    ws = await connect(hub, kiosk_headers(origin=origin))
    await subscribe(ws, "kiosks")


async def test_null_origin_is_accepted_only_when_listed_literally(
    start_hub: StartHub, connect: Connect
) -> None:
    server = await start_hub(make_hub_config(allowed_origins=("null",)))
    ws = await connect(server, kiosk_headers(origin="null"))
    await subscribe(ws, "kiosks")


async def test_missing_origin_allowed_when_configured(start_hub: StartHub, connect: Connect) -> None:
    server = await start_hub(make_hub_config(allow_missing_origin=True))
    ws = await connect(server, kiosk_headers(origin=None))
    await subscribe(ws, "kiosks")


async def test_the_seeds_token_header_style(
    start_hub: StartHub, connect: Connect, http: aiohttp.ClientSession
) -> None:
    server = await start_hub(make_hub_config(auth_header="token"))
    ws = await connect(server, {"token": KIOSK_TOKEN, "Origin": ORIGIN})
    await subscribe(ws, "kiosks")
    # With a custom header, a bearer Authorization header is not a credential.
    status, _ = await handshake_status(http, server, upgrade_headers(**kiosk_headers()))
    assert status == 401


async def test_signed_token_connects_with_its_rights(hub: HubServer, connect: Connect) -> None:
    ws = await connect(hub, kiosk_headers(token=signed(subscribe=("kiosks",))))
    await subscribe(ws, "kiosks")
    await ws.send_json({"type": "subscribe", "channel": "admin"})
    assert (await receive_json(ws))["code"] == "forbidden"


async def test_key_rotation_accepts_both_keys(hub: HubServer, connect: Connect) -> None:
    for key, kid in ((KEY_NEW, "2026-11"), (KEY_OLD, "2026-10")):
        ws = await connect(hub, kiosk_headers(token=signed(key=key, kid=kid)))
        await subscribe(ws, "kiosks")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(lambda: signed(now=time.time() - 120, ttl=60), id="expired"),
        pytest.param(lambda: signed(kid="2026-09"), id="unknown-kid"),
        pytest.param(lambda: signed(key=KEY_OLD, kid="2026-11"), id="wrong-key-for-kid"),
        pytest.param(lambda: signed(now=time.time() + 120), id="not-yet-valid"),
        pytest.param(lambda: signed(audience="other-service"), id="unexpected-aud"),
    ],
)
async def test_bad_signed_tokens_are_401(hub: HubServer, http: aiohttp.ClientSession, token: object) -> None:
    value = token()  # type: ignore[operator]
    status, body = await handshake_status(http, hub, upgrade_headers(**kiosk_headers(token=value)))
    assert status == 401
    assert value not in body


async def test_audience_is_enforced_when_configured(
    start_hub: StartHub, http: aiohttp.ClientSession, connect: Connect
) -> None:
    base = make_hub_config()
    assert base.signing is not None
    config = replace(base, signing=SigningConfig(keys=base.signing.keys, audience="wsgate-hub"))
    server = await start_hub(config)
    status, _ = await handshake_status(http, server, upgrade_headers(**kiosk_headers(token=signed())))
    assert status == 401
    status, _ = await handshake_status(
        http, server, upgrade_headers(**kiosk_headers(token=signed(audience="other")))
    )
    assert status == 401
    ws = await connect(server, kiosk_headers(token=signed(audience="wsgate-hub")))
    await subscribe(ws, "kiosks")


async def test_connection_closes_with_1008_when_its_signed_token_expires(
    hub: HubServer, connect: Connect
) -> None:
    ws = await connect(hub, kiosk_headers(token=signed(ttl=1.5)))
    await subscribe(ws, "kiosks")
    message = await ws.receive(timeout=TIMEOUT)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1008


async def test_static_token_connection_has_no_expiry(hub: HubServer, connect: Connect) -> None:
    ws = await connect(hub, kiosk_headers(token=ADMIN_TOKEN))
    await subscribe(ws, "anything")
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.3)


async def test_too_many_connections_is_429(
    start_hub: StartHub, http: aiohttp.ClientSession, connect: Connect
) -> None:
    server = await start_hub(make_hub_config(limits={"max_connections": 2}))
    await connect(server)
    await connect(server)
    status, _ = await handshake_status(http, server, upgrade_headers(**kiosk_headers()))
    assert status == 429
    snapshot = await (await http.get(server.url + "/metrics")).text()
    assert 'wsgate_hub_rejections_total{reason="too_many_connections"} 1.0' in snapshot


async def test_two_origin_headers_are_refused_as_malformed(hub: HubServer) -> None:
    pairs = [*kiosk_headers().items(), ("Origin", "https://evil.example.com")]
    raw = await raw_websocket("127.0.0.1", hub.port, pairs)
    assert raw.status == 400
    raw.close()


async def test_a_credential_in_the_query_string_is_not_accepted(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    async with http.get(
        ws_url(hub).replace("ws://", "http://") + f"?token={KIOSK_TOKEN}",
        headers=upgrade_headers(Origin=ORIGIN),
    ) as response:
        assert response.status == 401


async def test_publish_api_rejects_missing_and_wrong_credentials(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    body = {"channel": "kiosks", "data": {"action": "reset"}}
    async with http.post(hub.url + "/api/publish", json=body) as response:
        assert response.status == 401
    async with http.post(hub.url + "/api/publish", json=body, headers=bearer("nope")) as response:
        assert response.status == 401
    # A kiosk's token may connect but not publish.
    async with http.post(hub.url + "/api/publish", json=body, headers=bearer(KIOSK_TOKEN)) as response:
        assert response.status == 403
        assert KIOSK_TOKEN not in await response.text()
