"""Channels on a real hub: fan-out, rights, recovery after a disconnect, presence, the HTTP API."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    PUBLISH_TOKEN,
    TIMEOUT,
    Connect,
    StartHub,
    bearer,
    kiosk_headers,
    make_hub_config,
    publish_http,
    receive_json,
    subscribe,
)
from wsgate.config import HistoryConfig
from wsgate.hub.server import HubServer


async def test_publish_reaches_every_subscriber_and_no_other_channel(
    hub: HubServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    kiosks = [await connect(hub) for _ in range(3)]
    for ws in kiosks:
        await subscribe(ws, "kiosks")
    bystander = await connect(hub)
    await subscribe(bystander, "kiosk:9")

    answer = await publish_http(http, hub, "kiosks", {"action": "reset"})
    assert answer["channel"] == "kiosks"
    assert answer["offset"] == 1
    for ws in kiosks:
        assert await receive_json(ws) == {
            "type": "message",
            "channel": "kiosks",
            "offset": 1,
            "data": {"action": "reset"},
        }
    with pytest.raises(asyncio.TimeoutError):
        await bystander.receive(timeout=0.2)


async def test_offsets_rise_by_one_and_epoch_is_stable(
    hub: HubServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    ws = await connect(hub)
    first = await subscribe(ws, "kiosks")
    answers = [await publish_http(http, hub, "kiosks", i) for i in range(5)]
    assert [a["offset"] for a in answers] == [1, 2, 3, 4, 5]
    assert {a["epoch"] for a in answers} == {first["epoch"]}
    assert [(await receive_json(ws))["offset"] for _ in range(5)] == [1, 2, 3, 4, 5]


async def test_websocket_publish_needs_the_publish_right(hub: HubServer, connect: Connect) -> None:
    kiosk = await connect(hub)
    await subscribe(kiosk, "kiosks")
    await kiosk.send_json({"type": "publish", "channel": "kiosks", "data": "hi"})
    assert (await receive_json(kiosk))["code"] == "forbidden"

    admin = await connect(hub, kiosk_headers(token=ADMIN_TOKEN))
    await admin.send_json(
        {"type": "publish", "channel": "kiosks", "data": {"action": "announce", "text": "hi"}}
    )
    message = await receive_json(kiosk)
    assert message["data"] == {"action": "announce", "text": "hi"}


async def test_subscribe_rights_are_enforced_per_channel(hub: HubServer, connect: Connect) -> None:
    kiosk = await connect(hub)
    await subscribe(kiosk, "kiosk:7")  # allowed by the pattern kiosk:*
    await kiosk.send_json({"type": "subscribe", "channel": "admin-only"})
    error = await receive_json(kiosk)
    assert error["type"] == "error"
    assert error["code"] == "forbidden"


async def test_bad_messages_get_an_error_and_the_connection_stays_usable(
    hub: HubServer, connect: Connect
) -> None:
    ws = await connect(hub)
    await ws.send_str("{not json")
    assert (await receive_json(ws))["code"] == "bad_request"
    await ws.send_bytes(b"\x00\x01")
    assert (await receive_json(ws))["code"] == "bad_request"
    await ws.send_json({"type": "unsubscribe", "channel": "kiosks"})
    assert (await receive_json(ws))["code"] == "bad_request"
    await subscribe(ws, "kiosks")


async def test_unsubscribe_stops_delivery(
    hub: HubServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    ws = await connect(hub)
    await subscribe(ws, "kiosks")
    await subscribe(ws, "kiosk:1")
    await ws.send_json({"type": "unsubscribe", "channel": "kiosks"})
    await publish_http(http, hub, "kiosks", "not for you")
    await publish_http(http, hub, "kiosk:1", "for you")
    message = await receive_json(ws)
    assert (message["channel"], message["data"]) == ("kiosk:1", "for you")


async def test_recovery_after_disconnect_replays_exactly_the_missed_messages(
    hub: HubServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    ws = await connect(hub)
    epoch = (await subscribe(ws, "kiosks"))["epoch"]
    for i in range(1, 4):
        await publish_http(http, hub, "kiosks", {"n": i})
    seen = [await receive_json(ws) for _ in range(3)]
    await ws.close()  # the kiosk goes offline after processing offset 3 …

    for i in range(4, 8):  # … while "reset" and friends are published
        await publish_http(http, hub, "kiosks", {"n": i})

    back = await connect(hub)
    answer = await subscribe(back, "kiosks", since={"epoch": epoch, "offset": seen[-1]["offset"]})
    assert answer["recovered"] is True
    assert answer["offset"] == 7
    replayed = [await receive_json(back) for _ in range(4)]
    assert [m["offset"] for m in replayed] == [4, 5, 6, 7]
    assert [m["data"]["n"] for m in replayed] == [4, 5, 6, 7]

    await publish_http(http, hub, "kiosks", {"n": 8})  # live ones follow, none duplicated
    assert (await receive_json(back))["offset"] == 8
    with pytest.raises(asyncio.TimeoutError):
        await back.receive(timeout=0.2)


async def test_recovery_with_nothing_missed_is_recovered_and_silent(
    hub: HubServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    answer = await publish_http(http, hub, "kiosks", 1)
    ws = await connect(hub)
    resumed = await subscribe(ws, "kiosks", since={"epoch": answer["epoch"], "offset": answer["offset"]})
    assert resumed["recovered"] is True
    with pytest.raises(asyncio.TimeoutError):
        await ws.receive(timeout=0.2)


async def test_recovery_fails_loudly_after_trimming_or_with_another_epoch(
    start_hub: StartHub, connect: Connect, http: aiohttp.ClientSession
) -> None:
    server = await start_hub(make_hub_config(history=HistoryConfig(size=3, ttl=600.0)))
    first = await publish_http(http, server, "kiosks", 1)
    for i in range(2, 7):
        await publish_http(http, server, "kiosks", i)
    ws = await connect(server)
    trimmed = await subscribe(ws, "kiosks", since={"epoch": first["epoch"], "offset": 1})
    assert trimmed["recovered"] is False
    assert trimmed["offset"] == 6
    other = await connect(server)
    stale = await subscribe(other, "kiosks", since={"epoch": "not-this-epoch", "offset": 5})
    assert stale["recovered"] is False
    # No replay after a failed recovery: the client resyncs, then gets live messages only.
    await publish_http(http, server, "kiosks", 7)
    assert (await receive_json(ws))["offset"] == 7
    assert (await receive_json(other))["offset"] == 7


async def test_history_of_a_restarted_hub_has_a_new_epoch(
    start_hub: StartHub, connect: Connect, http: aiohttp.ClientSession
) -> None:
    first = await start_hub()
    before = await publish_http(http, first, "kiosks", 1)
    await first.stop()
    server = await start_hub()
    ws = await connect(server)
    answer = await subscribe(ws, "kiosks", since={"epoch": before["epoch"], "offset": 1})
    assert answer["recovered"] is False
    assert answer["epoch"] != before["epoch"]


async def test_presence_lists_subscribers_with_subject_and_connect_time(
    hub: HubServer, connect: Connect, http: aiohttp.ClientSession
) -> None:
    kiosk = await connect(hub)
    await subscribe(kiosk, "kiosks")
    admin = await connect(hub, kiosk_headers(token=ADMIN_TOKEN))
    await subscribe(admin, "kiosks")

    async def present() -> list[dict[str, Any]]:
        async with http.get(
            hub.url + "/api/presence", params={"channel": "kiosks"}, headers=bearer(PUBLISH_TOKEN)
        ) as response:
            assert response.status == 200
            body = await response.json()
            assert body["channel"] == "kiosks"
            clients: list[dict[str, Any]] = body["clients"]
            return clients

    clients = await present()
    assert sorted(c["subject"] for c in clients) == ["admin", "kiosk"]
    assert all(c["id"] and c["connected_at"].endswith("+00:00") for c in clients)

    await kiosk.close()
    for _ in range(int(TIMEOUT / 0.01)):
        if [c["subject"] for c in await present()] == ["admin"]:
            break
        await asyncio.sleep(0.01)
    assert [c["subject"] for c in await present()] == ["admin"]


async def test_presence_needs_a_publish_credential(hub: HubServer, http: aiohttp.ClientSession) -> None:
    async with http.get(hub.url + "/api/presence", params={"channel": "kiosks"}) as response:
        assert response.status == 401
    async with http.get(
        hub.url + "/api/presence", params={"channel": "bad channel"}, headers=bearer(PUBLISH_TOKEN)
    ) as response:
        assert response.status == 400


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b'{"channel":"kiosks"}', 400),
        (b'{"channel":"no spaces","data":1}', 400),
        (b'{"channel":"kiosks","data":1,"extra":2}', 400),
        (b"[1,2]", 400),
    ],
)
async def test_publish_api_bad_bodies_are_400(
    hub: HubServer, http: aiohttp.ClientSession, body: bytes, status: int
) -> None:
    async with http.post(hub.url + "/api/publish", data=body, headers=bearer(PUBLISH_TOKEN)) as response:
        assert response.status == status
        assert (await response.json())["error"] == "bad_request"


async def test_publish_api_oversized_body_is_413(hub: HubServer, http: aiohttp.ClientSession) -> None:
    big = "x" * (64 * 1024)
    async with http.post(
        hub.url + "/api/publish", json={"channel": "kiosks", "data": big}, headers=bearer(PUBLISH_TOKEN)
    ) as response:
        assert response.status == 413
    async with http.post(
        hub.url + "/api/publish", data=b"x" * (200 * 1024), headers=bearer(PUBLISH_TOKEN)
    ) as response:
        assert response.status == 413
    # The hub is still serving.
    assert (await publish_http(http, hub, "kiosks", "still here"))["offset"] == 1


async def test_healthz_and_metrics(hub: HubServer, connect: Connect, http: aiohttp.ClientSession) -> None:
    async with http.get(hub.url + "/healthz") as response:
        assert response.status == 200
    ws = await connect(hub)
    await subscribe(ws, "kiosks")
    await publish_http(http, hub, "kiosks", 1)
    await receive_json(ws)
    async with http.get(hub.url + "/metrics") as response:
        text = await response.text()
    assert "wsgate_hub_connections 1.0" in text
    assert "wsgate_hub_subscriptions 1.0" in text
    assert 'wsgate_hub_messages_in_total{via="http"} 1.0' in text
    assert "wsgate_hub_messages_out_total 1.0" in text
    assert "wsgate_hub_publish_latency_seconds_count 1.0" in text
