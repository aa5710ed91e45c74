"""The Python client (wsgate.client): its pure core directly, then against real hubs on real sockets -
recovery across dropped connections and hub restarts, token refresh across expiry, refusals - and
`wsgate listen` as a real process."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import (
    ADMIN_TOKEN,
    KEY_NEW,
    KIOSK_TOKEN,
    ORIGIN,
    PUBLISH_TOKEN,
    TIMEOUT,
    StartHub,
    make_hub_config,
    publish_http,
    wait_for,
    ws_url,
)
from wsgate import client as wsclient
from wsgate.auth.tokens import mint_token
from wsgate.cli import main
from wsgate.client import (
    Backoff,
    ClientClosed,
    Cursor,
    HubClient,
    HubEvent,
    HubRefused,
    HubUnreachable,
    Message,
    OffsetGap,
    PublishFailed,
    Resync,
    Since,
    Subscription,
    SubscriptionRefused,
    backoff_delay,
    connect,
    error_concerns_subscribe,
    refresh_at,
    token_lifetime,
)
from wsgate.config import Address
from wsgate.errors import WsgateError
from wsgate.hub import protocol
from wsgate.hub.server import HubServer
from wsgate.secret import Secret

# Reconnect quickly in tests; the shape of the backoff is tested on its own.
FAST = Backoff(base=0.05, cap=0.25)


@pytest.fixture
def client_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The client's log records, wherever `wsgate` logging has been pointed (the CLI points it at stderr)."""
    logger = logging.getLogger("wsgate.client")
    logger.addHandler(caplog.handler)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(previous)


async def next_event(subscription: Subscription, timeout: float = TIMEOUT) -> HubEvent:
    return await asyncio.wait_for(anext(subscription), timeout)


async def take(subscription: Subscription, count: int) -> list[HubEvent]:
    return [await next_event(subscription) for _ in range(count)]


def kiosk_client(server: HubServer, **kwargs: Any) -> HubClient:
    options: dict[str, Any] = {"token": KIOSK_TOKEN, "origin": ORIGIN, "backoff": FAST, **kwargs}
    return connect(ws_url(server), **options)


def disconnects(server: HubServer, code: int) -> float:
    value = server.hub.metrics.registry.get_sample_value("wsgate_hub_disconnects_total", {"code": str(code)})
    return value or 0.0


def signed_token(ttl: float = 2.0, subject: str = "kiosk-r") -> str:
    return mint_token(key=Secret(KEY_NEW), kid="2026-11", subject=subject, ttl=ttl, subscribe=["kiosks"])


# --- backoff ---------------------------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=0, max_value=200),
    base=st.floats(min_value=0.001, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=1000.0),
    rng=st.randoms(use_true_random=False),
)
def test_backoff_delay_stays_between_zero_and_the_capped_exponential(
    attempt: int, base: float, extra: float, rng: random.Random
) -> None:
    cap = base + extra
    delay = backoff_delay(attempt, base, cap, rng)
    assert 0.0 <= delay <= min(cap, base * 2**attempt)


def test_backoff_delay_never_overflows_for_huge_attempts() -> None:
    rng = random.Random(1)
    for attempt in (1023, 1024, 10_000, 10**9):
        delay = backoff_delay(attempt, 1e300, 30.0, rng)
        assert math.isfinite(delay)
        assert 0.0 <= delay <= 30.0


def test_backoff_uses_full_jitter_over_the_whole_range() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(3, 0.5, 30.0, rng) for _ in range(4000)]  # ceiling 0.5 * 2**3 = 4 s
    assert min(delays) < 0.05
    assert max(delays) > 3.95
    assert 1.9 < sum(delays) / len(delays) < 2.1
    capped = [backoff_delay(20, 0.5, 30.0, rng) for _ in range(1000)]
    assert max(capped) <= 30.0
    assert max(capped) > 29.0


def test_backoff_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=0)
    with pytest.raises(ValueError, match="cap"):
        Backoff(base=1.0, cap=0.5)
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1, 0.5, 30.0, random.Random())
    assert Backoff().base == 0.5
    assert Backoff().cap == 30.0


# --- recovery: the cursor --------------------------------------------------------------------------------


def test_first_subscribe_records_the_position_without_a_resync() -> None:
    cursor = Cursor("kiosks")
    assert json.loads(cursor.subscribe_command()) == {"type": "subscribe", "channel": "kiosks"}
    assert cursor.on_message(1, "early") is None  # not subscribed yet: nothing is delivered
    assert cursor.on_subscribed("e1", 5, recovered=False) is None
    assert cursor.position == Since("e1", 5)
    assert cursor.on_message(6, {"a": 1}) == Message("kiosks", 6, {"a": 1})
    assert cursor.position == Since("e1", 6)


def test_subscribe_command_carries_since_in_the_hub_protocol() -> None:
    cursor = Cursor("kiosk:7")
    cursor.on_subscribed("e1", 3, recovered=False)
    cursor.on_message(4, None)
    command = protocol.decode_command(cursor.subscribe_command())  # the hub's own validator accepts it
    assert command == protocol.Subscribe("kiosk:7", Since("e1", 4))


def test_duplicates_are_dropped_and_gaps_detected() -> None:
    cursor = Cursor("kiosks")
    cursor.on_subscribed("e1", 0, recovered=False)
    assert [cursor.on_message(o, o) for o in (1, 2, 2, 1, 3)] == [
        Message("kiosks", 1, 1),
        Message("kiosks", 2, 2),
        None,
        None,
        Message("kiosks", 3, 3),
    ]
    with pytest.raises(OffsetGap, match="expected offset 4, got 6"):
        cursor.on_message(6, None)
    assert cursor.position == Since("e1", 3)  # the gap moved nothing: recovery starts after 3


def test_recovered_keeps_the_position_and_replayed_messages_follow() -> None:
    cursor = Cursor("kiosks")
    cursor.on_subscribed("e1", 2, recovered=False)
    assert cursor.on_subscribed("e1", 5, recovered=True) is None  # 3, 4, 5 are replayed next
    assert cursor.position == Since("e1", 2)
    assert [m.offset for m in (cursor.on_message(o, None) for o in (3, 4, 5)) if m] == [3, 4, 5]


@pytest.mark.parametrize(("epoch", "recovered"), [("e2", False), ("e1", False), ("e2", True)])
def test_a_failed_recovery_is_a_resync_to_the_new_position(epoch: str, recovered: bool) -> None:
    cursor = Cursor("kiosks")
    cursor.on_subscribed("e1", 7, recovered=False)
    assert cursor.on_subscribed(epoch, 2, recovered=recovered) == Resync("kiosks", epoch, 2)
    assert cursor.position == Since(epoch, 2)
    assert cursor.on_message(3, "x") == Message("kiosks", 3, "x")


def test_a_given_since_is_recovered_or_resynced_on_the_first_subscribe() -> None:
    cursor = Cursor("kiosks", Since("e1", 4))
    assert json.loads(cursor.subscribe_command())["since"] == {"epoch": "e1", "offset": 4}
    assert cursor.on_subscribed("e1", 9, recovered=True) is None
    assert Cursor("kiosks", Since("old", 4)).on_subscribed("e1", 9, recovered=False) == Resync(
        "kiosks", "e1", 9
    )


def test_hub_errors_are_attributed_to_subscribes_by_their_text() -> None:
    assert error_concerns_subscribe("no subscribe right on channel kiosks")
    assert error_concerns_subscribe("already subscribed to kiosks")
    assert error_concerns_subscribe("too many subscriptions on this connection")
    assert not error_concerns_subscribe("no publish right on channel kiosks")
    assert not error_concerns_subscribe("not subscribed to kiosks")


# --- tokens ----------------------------------------------------------------------------------------------


def test_token_lifetime_reads_a_signed_token_without_its_key() -> None:
    token = mint_token(key=Secret(KEY_NEW), kid="2026-11", subject="s", ttl=300, now=1_000_000.5)
    assert token_lifetime(token, now=0.0) == (1_000_000.0, 1_000_300.0)
    assert refresh_at(1_000_000.0, 1_000_300.0) == pytest.approx(1_000_240.0)


def test_token_lifetime_is_none_for_tokens_that_do_not_expire() -> None:
    assert token_lifetime(KIOSK_TOKEN, now=0.0) is None
    assert token_lifetime("a.b.c", now=0.0) is None
    header = "eyJhbGciOiJIUzI1NiJ9"  # {"alg":"HS256"}
    claims = "eyJzdWIiOiJ4In0"  # {"sub":"x"}: no exp
    assert token_lifetime(f"{header}.{claims}.c2ln", now=0.0) is None


def test_token_lifetime_without_iat_starts_when_received() -> None:
    header = "eyJhbGciOiJIUzI1NiJ9"
    claims = "eyJleHAiOjEwMH0"  # {"exp":100}
    assert token_lifetime(f"{header}.{claims}.c2ln", now=60.0) == (60.0, 100.0)


# --- arguments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://127.0.0.1:9000/ws", "ws:// or wss://"),
        ("ws:///ws", "ws:// or wss://"),
        ("ws://127.0.0.1:9000/ws?token=abc", r"query string \(token=\)"),
        ("wss://hub.example.org/ws?x=1&Ticket=abc", r"query string \(Ticket=\)"),
        ("ws://user:secret@127.0.0.1:9000/ws", "credentials"),
    ],
)
def test_connect_refuses_urls_that_carry_or_cannot_carry_credentials(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as refused:
        connect(url, token=KIOSK_TOKEN)
    assert "abc" not in str(refused.value)
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"token": ""}, "token"),
        ({"token": "abc\r\nX-Evil: 1"}, "token"),
        ({"token": " padded "}, "token"),
        ({"token": "t", "header": "bad header"}, "header"),
        ({"token": "t", "header": "Origin"}, "handshake"),
        ({"token": "t", "header": "sec-websocket-key"}, "handshake"),
        ({"token": "t", "max_queue": 0}, "max_queue"),
        ({"token": "t", "open_timeout": 0}, "open_timeout"),
    ],
)
def test_connect_refuses_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        connect("ws://127.0.0.1:9/ws", **kwargs)


async def test_a_client_must_be_open_to_be_used() -> None:
    client = connect("ws://127.0.0.1:9/ws", token="t")
    with pytest.raises(ClientClosed, match="not open"):
        client.subscribe("kiosks")
    await client.close()
    with pytest.raises(ClientClosed):
        await client.publish("kiosks", 1)


# --- against a real hub ----------------------------------------------------------------------------------


async def test_subscribe_receives_in_order_and_closes_with_1000(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    async with kiosk_client(hub) as client:
        assert client.connected
        subscription = client.subscribe("kiosks")
        confirmed = await subscription.wait_subscribed()
        assert confirmed.offset == 0
        assert subscription.position is None  # nothing delivered yet
        for n in range(3):
            await publish_http(http, hub, "kiosks", {"n": n})
        events = await take(subscription, 3)
        assert events == [Message("kiosks", n + 1, {"n": n}) for n in range(3)]
        assert subscription.position is not None
        assert subscription.position.offset == 3
        with pytest.raises(ValueError, match="already subscribed"):
            client.subscribe("kiosks")
    await wait_for(lambda: disconnects(hub, 1000) == 1, what="a 1000 close at the hub")
    with pytest.raises(StopAsyncIteration):
        await next_event(subscription)


async def test_a_custom_auth_header_carries_the_raw_token(start_hub: StartHub) -> None:
    hub = await start_hub(make_hub_config(auth_header="token"))
    async with kiosk_client(hub, header="token") as client:
        subscription = client.subscribe("kiosks")
        await subscription.wait_subscribed()
    with pytest.raises(HubRefused) as refused:  # Authorization: Bearer is not what this hub reads
        await kiosk_client(hub).open()
    assert refused.value.status == 401


async def test_publish_over_the_websocket_reaches_subscribers(hub: HubServer) -> None:
    async with (
        kiosk_client(hub) as listener,
        kiosk_client(hub, token=ADMIN_TOKEN) as publisher,
    ):
        subscription = listener.subscribe("kiosks")
        await subscription.wait_subscribed()
        await publisher.publish("kiosks", {"action": "reset"})
        await publisher.publish("kiosks", [1, "two", None])
        assert await take(subscription, 2) == [
            Message("kiosks", 1, {"action": "reset"}),
            Message("kiosks", 2, [1, "two", None]),
        ]
        with pytest.raises(ValueError, match="channel"):
            await publisher.publish("bad channel", 1)
        with pytest.raises(ValueError, match="not JSON"):
            await publisher.publish("kiosks", float("nan"))


async def test_a_refused_publish_is_logged_and_not_taken_for_a_subscribe_answer(
    hub: HubServer, http: aiohttp.ClientSession, client_log: pytest.LogCaptureFixture
) -> None:
    async with kiosk_client(hub) as client:  # the kiosk token has no publish right
        await client.publish("kiosks", 1)
        subscription = client.subscribe("kiosk:1")  # its answer follows the publish's error on the wire
        await subscription.wait_subscribed()
        await publish_http(http, hub, "kiosk:1", "hello")
        assert await next_event(subscription) == Message("kiosk:1", 1, "hello")
    assert "no publish right on channel kiosks" in client_log.text
    assert KIOSK_TOKEN not in client_log.text


async def test_a_forbidden_channel_raises_subscription_refused(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    async with kiosk_client(hub) as client:
        forbidden = client.subscribe("admin")
        allowed = client.subscribe("kiosks")
        with pytest.raises(SubscriptionRefused) as refused:
            await forbidden.wait_subscribed()
        assert refused.value.channel == "admin"
        assert refused.value.code == "forbidden"
        with pytest.raises(SubscriptionRefused):
            await next_event(forbidden)
        await allowed.wait_subscribed()
        await publish_http(http, hub, "kiosks", 1)
        assert await next_event(allowed) == Message("kiosks", 1, 1)
        # The refused channel is forgotten: subscribing to it again asks the hub again.
        with pytest.raises(SubscriptionRefused):
            await client.subscribe("admin").wait_subscribed()


async def test_unsubscribe_ends_iteration_and_the_channel_can_be_subscribed_again(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    async with kiosk_client(hub) as client:
        async with client.subscribe("kiosks") as subscription:
            await subscription.wait_subscribed()
        with pytest.raises(StopAsyncIteration):
            await next_event(subscription)
        await wait_for(lambda: not hub.hub.sessions or _subscriptions(hub) == 0, what="the unsubscribe")
        again = client.subscribe("kiosks")
        await again.wait_subscribed()
        await publish_http(http, hub, "kiosks", "once")
        assert await next_event(again) == Message("kiosks", 1, "once")


def _subscriptions(hub: HubServer) -> float:
    return hub.hub.metrics.registry.get_sample_value("wsgate_hub_subscriptions") or 0.0


@pytest.mark.parametrize("how", ["close frame", "transport abort"])
async def test_a_dropped_connection_recovers_every_message_once_in_order(
    hub: HubServer, http: aiohttp.ClientSession, how: str
) -> None:
    async with kiosk_client(hub) as client:
        subscription = client.subscribe("kiosks")
        others = client.subscribe("kiosk:9")
        await subscription.wait_subscribed()
        await others.wait_subscribed()
        for n in (1, 2):
            await publish_http(http, hub, "kiosks", n)
        assert [e.offset for e in await take(subscription, 2)] == [1, 2]

        (session,) = hub.hub.sessions.values()
        if how == "close frame":
            hub.hub.close_session_soon(session, 1012, "restart")
        else:
            session.transport.abort()
        for n in (3, 4, 5):  # while the client is (being) disconnected
            await publish_http(http, hub, "kiosks", n)
        await publish_http(http, hub, "kiosk:9", "other")
        await wait_for(
            lambda: bool(hub.hub.sessions) and session.id not in hub.hub.sessions, what="a new connection"
        )
        await publish_http(http, hub, "kiosks", 6)
        events = await take(subscription, 4)
        assert events == [Message("kiosks", n, n) for n in (3, 4, 5, 6)]
        assert await next_event(others) == Message("kiosk:9", 1, "other")
        assert subscription.position is not None
        assert subscription.position.offset == 6


async def test_a_hub_restart_yields_a_resync_then_live_messages(
    start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    first = await start_hub()
    async with kiosk_client(first) as client:
        subscription = client.subscribe("kiosks")
        await subscription.wait_subscribed()
        await publish_http(http, first, "kiosks", "before")
        assert await next_event(subscription) == Message("kiosks", 1, "before")
        old_epoch = subscription.position.epoch  # type: ignore[union-attr]

        await first.stop()  # the memory broker's history goes with it
        second = await start_hub(make_hub_config(listen=Address("127.0.0.1", first.port)))
        resync = await next_event(subscription)
        assert isinstance(resync, Resync)
        assert resync.channel == "kiosks"
        assert resync.epoch != old_epoch
        assert resync.offset == 0
        assert subscription.position == Since(resync.epoch, 0)

        await publish_http(http, second, "kiosks", "after")
        assert await next_event(subscription) == Message("kiosks", 1, "after")


async def test_a_saved_position_resumes_in_a_new_client(hub: HubServer, http: aiohttp.ClientSession) -> None:
    async with kiosk_client(hub) as client:
        subscription = client.subscribe("kiosks")
        await subscription.wait_subscribed()
        await publish_http(http, hub, "kiosks", 1)
        await next_event(subscription)
        saved = subscription.position
    assert saved is not None
    for n in (2, 3):
        await publish_http(http, hub, "kiosks", n)
    async with kiosk_client(hub) as client:
        resumed = client.subscribe("kiosks", since=saved)
        assert await take(resumed, 2) == [Message("kiosks", 2, 2), Message("kiosks", 3, 3)]
        stale = client.subscribe("kiosk:1", since=Since("an-epoch-long-gone", 40))
        event = await next_event(stale)
        assert isinstance(event, Resync)
        assert event.offset == 0


async def test_a_slow_consumer_loses_nothing(hub: HubServer, http: aiohttp.ClientSession) -> None:
    # A tiny buffer: the client stops reading while its consumer lags, and catches up afterwards.
    async with kiosk_client(hub, max_queue=2) as client:
        subscription = client.subscribe("kiosks")
        await subscription.wait_subscribed()
        for n in range(1, 21):
            await publish_http(http, hub, "kiosks", n)
        assert await take(subscription, 20) == [Message("kiosks", n, n) for n in range(1, 21)]


async def test_a_consumer_too_slow_for_the_hub_catches_up_from_history(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    """The client stops reading while its buffer is full; the hub closes it with 1013 (slow consumer); the
    client reconnects and the hub replays what followed, so the consumer still sees every message once."""
    payload = "x" * 32 * 1024
    async with kiosk_client(hub, max_queue=4) as client:
        subscription = client.subscribe("kiosks")
        await subscription.wait_subscribed()
        published = 0
        while not _slow_consumers(hub):  # fill the kernel's buffers, then the hub's send queue
            published = (await publish_http(http, hub, "kiosks", payload))["offset"]
            assert published < 2000, "the hub never saw a slow consumer"
        for _ in range(3):  # published while the client is away
            published = (await publish_http(http, hub, "kiosks", payload))["offset"]
        events = await take(subscription, published)
        assert [e.offset for e in events] == list(range(1, published + 1))
        assert all(isinstance(e, Message) for e in events)
    assert disconnects(hub, 1013) == 1


def _slow_consumers(hub: HubServer) -> float:
    return hub.hub.metrics.registry.get_sample_value("wsgate_hub_slow_consumers_total") or 0.0


async def test_a_gap_in_offsets_is_recovered_on_a_new_connection(unused_tcp_port: int) -> None:
    """A scripted hub that skips an offset: the client closes with 1002, reconnects with `since` at the last
    offset it has, and drops the duplicate the replay starts with."""
    requests: list[dict[str, Any]] = []
    close_codes: list[int | None] = []

    async def scripted_hub(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        requests.append(json.loads((await ws.receive()).data))
        if len(requests) == 1:
            frames = [protocol.subscribed("kiosks", "e1", 0, False), protocol.message("kiosks", 1, '"a"')]
            frames.append(protocol.message("kiosks", 3, '"c"'))  # 2 went missing
        else:
            frames = [protocol.subscribed("kiosks", "e1", 3, True)]
            frames += [
                protocol.message("kiosks", n, json.dumps(d)) for n, d in ((1, "a"), (2, "b"), (3, "c"))
            ]
        for frame in frames:
            await ws.send_str(frame)
        async for _ in ws:
            pass
        close_codes.append(ws.close_code)
        return ws

    app = web.Application()
    app.router.add_get("/ws", scripted_hub)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        async with connect(f"ws://127.0.0.1:{unused_tcp_port}/ws", token="t", backoff=FAST) as client:
            subscription = client.subscribe("kiosks")
            events = await take(subscription, 3)
    finally:
        await runner.cleanup()
    assert events == [Message("kiosks", 1, "a"), Message("kiosks", 2, "b"), Message("kiosks", 3, "c")]
    assert requests == [
        {"type": "subscribe", "channel": "kiosks"},
        {"type": "subscribe", "channel": "kiosks", "since": {"epoch": "e1", "offset": 1}},
    ]
    assert close_codes == [1002, 1000]


# --- refusals and credentials ------------------------------------------------------------------------------


async def test_a_wrong_credential_is_hub_refused_401(hub: HubServer) -> None:
    with pytest.raises(HubRefused) as refused:
        async with kiosk_client(hub, token="wrong-token-value"):
            pass
    assert refused.value.status == 401
    assert isinstance(refused.value, WsgateError)
    assert "wrong-token-value" not in str(refused.value)
    assert "401" in str(refused.value)


async def test_a_foreign_origin_is_hub_refused_403(hub: HubServer) -> None:
    with pytest.raises(HubRefused) as refused:
        await kiosk_client(hub, origin="https://evil.example").open()
    assert refused.value.status == 403


async def test_an_unreachable_hub_fails_the_first_connection(unused_tcp_port: int) -> None:
    with pytest.raises(HubUnreachable):
        await connect(f"ws://127.0.0.1:{unused_tcp_port}/ws", token="t").open()


async def test_a_401_asks_the_refresher_once(hub: HubServer) -> None:
    calls: list[str] = []

    async def refresh_good() -> str:
        calls.append("good")
        return KIOSK_TOKEN

    async with kiosk_client(hub, token="expired-or-revoked", token_refresh=refresh_good) as client:
        await client.subscribe("kiosks").wait_subscribed()
    assert calls == ["good"]

    async def refresh_bad() -> str:
        calls.append("bad")
        return "still-wrong"

    with pytest.raises(HubRefused) as refused:
        await kiosk_client(hub, token="expired-or-revoked", token_refresh=refresh_bad).open()
    assert refused.value.status == 401
    assert calls == ["good", "bad"]


async def test_a_401_on_reconnect_is_refreshed_or_fatal(start_hub: StartHub) -> None:
    """The hub comes back with the kiosk token revoked: a refresher supplies another; without one, the
    subscription ends with HubRefused(401)."""
    first = await start_hub()
    calls = 0

    async def refresh() -> str:
        nonlocal calls
        calls += 1
        return ADMIN_TOKEN

    async with kiosk_client(first, token_refresh=refresh) as refreshing, kiosk_client(first) as plain:
        refreshed = refreshing.subscribe("kiosks")
        doomed = plain.subscribe("kiosks")
        await refreshed.wait_subscribed()
        await doomed.wait_subscribed()
        await first.stop()
        admin_only = tuple(t for t in make_hub_config().tokens if t.name == "admin")
        await start_hub(make_hub_config(listen=Address("127.0.0.1", first.port), tokens=admin_only))
        assert isinstance(await next_event(refreshed), Resync)
        assert calls == 1
        with pytest.raises(HubRefused) as refused:
            await next_event(doomed)
        assert refused.value.status == 401
        with pytest.raises(HubRefused):
            await plain.publish("kiosks", 1)


async def test_a_signed_token_is_refreshed_and_its_expiry_loses_nothing(
    hub: HubServer, http: aiohttp.ClientSession
) -> None:
    refreshed = 0

    async def refresh() -> str:
        nonlocal refreshed
        refreshed += 1
        return signed_token()

    received: list[HubEvent] = []
    published: list[int] = []
    stop = asyncio.Event()

    async def publisher() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            published.append((await publish_http(http, hub, "kiosks", n))["offset"])
            await asyncio.sleep(0.02)  # pacing the load, not waiting for anything

    async def consume(subscription: Subscription) -> None:
        async for event in subscription:
            received.append(event)

    async with kiosk_client(hub, token=signed_token(), token_refresh=refresh) as client:
        subscription = client.subscribe("kiosks")
        await subscription.wait_subscribed()
        consumer = asyncio.create_task(consume(subscription))
        load = asyncio.create_task(publisher())
        # Each 2 s token's connection is closed by the hub with 1008 when it expires.
        await wait_for(lambda: disconnects(hub, 1008) >= 2, what="two token expiries")
        stop.set()
        await load
        last = published[-1]
        await wait_for(lambda: bool(received) and received[-1].offset >= last, what="the last message")
        consumer.cancel()
    assert received == [Message("kiosks", n, n) for n in range(1, last + 1)]
    assert refreshed >= 2
    assert disconnects(hub, 1008) >= 2


async def test_a_failing_refresher_is_retried_and_logged_without_the_token(
    hub: HubServer, client_log: pytest.LogCaptureFixture
) -> None:
    token = signed_token(ttl=2.0)
    attempts = 0

    async def refresh() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("identity provider down")
        return signed_token(ttl=60.0)

    async with kiosk_client(hub, token=token, token_refresh=refresh) as client:
        subscription = client.subscribe("kiosks")
        await subscription.wait_subscribed()
        await wait_for(lambda: attempts >= 2, what="a second refresh attempt")
    assert "token_refresh failed (RuntimeError)" in client_log.text
    assert token not in client_log.text


# --- the synchronous HTTP facade -------------------------------------------------------------------------


async def test_sync_publish_returns_offsets(hub: HubServer) -> None:
    def publish_two() -> list[int]:
        return [
            wsclient.publish(hub.url, "kiosks", {"n": 1}, token=PUBLISH_TOKEN),
            wsclient.publish(hub.url + "/api/publish", "kiosks", {"n": 2}, token=PUBLISH_TOKEN),
        ]

    assert await asyncio.to_thread(publish_two) == [1, 2]


async def test_sync_publish_failures(hub: HubServer, unused_tcp_port: int) -> None:
    with pytest.raises(PublishFailed) as failed:
        await asyncio.to_thread(wsclient.publish, hub.url, "kiosks", 1, token="wrong-token")
    assert failed.value.status == 401
    assert "wrong-token" not in str(failed.value)
    with pytest.raises(PublishFailed) as failed:
        await asyncio.to_thread(wsclient.publish, hub.url, "no spaces", 1, token=PUBLISH_TOKEN)
    assert failed.value.status == 400
    with pytest.raises(ValueError, match="not JSON"):
        wsclient.publish(hub.url, "kiosks", float("inf"), token=PUBLISH_TOKEN)
    # Called from a coroutine (this one), it runs on a private loop instead of failing.
    with pytest.raises(PublishFailed, match="cannot reach the hub") as failed:
        wsclient.publish(f"http://127.0.0.1:{unused_tcp_port}", "kiosks", 1, token=PUBLISH_TOKEN)
    assert failed.value.status is None


# --- wsgate listen ---------------------------------------------------------------------------------------


class Listener:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    async def line(self, stream: asyncio.StreamReader | None) -> str:
        assert stream is not None
        raw = await asyncio.wait_for(stream.readline(), TIMEOUT)
        if not raw:
            raise AssertionError(f"listen ended early: {''.join(self.stderr)}")
        return raw.decode()

    async def event(self) -> dict[str, Any]:
        value = json.loads(await self.line(self.proc.stdout))
        assert isinstance(value, dict)
        return value

    async def wait_stderr(self, pattern: str) -> None:
        while True:
            line = await self.line(self.proc.stderr)
            self.stderr.append(line)
            if re.search(pattern, line):
                return

    async def finish(self, signum: int | None = None) -> tuple[int, str, str]:
        if signum is not None:
            self.proc.send_signal(signum)
        out, err = await asyncio.wait_for(self.proc.communicate(), TIMEOUT)
        assert self.proc.returncode is not None
        return self.proc.returncode, out.decode(), "".join(self.stderr) + err.decode()


@asynccontextmanager
async def listen(*args: str, env: dict[str, str]) -> AsyncIterator[Listener]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wsgate", "listen", *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield Listener(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("header", ["authorization", "token"])
async def test_listen_prints_json_lines_resyncs_and_stops_on_sigint(
    start_hub: StartHub, http: aiohttp.ClientSession, header: str
) -> None:
    first = await start_hub(make_hub_config(auth_header=header))
    env = {"WSGATE_TOKEN": KIOSK_TOKEN, "WSGATE_AUTH_HEADER": header}
    async with listen("--url", ws_url(first), "--channel", "kiosks", "--origin", ORIGIN, env=env) as proc:
        await proc.wait_stderr(r"subscribed to kiosks")
        await publish_http(http, first, "kiosks", {"action": "reset", "text": "é"})
        await publish_http(http, first, "kiosks", 2)
        assert await proc.event() == {
            "channel": "kiosks",
            "offset": 1,
            "data": {"action": "reset", "text": "é"},
        }
        assert await proc.event() == {"channel": "kiosks", "offset": 2, "data": 2}

        await first.stop()
        second = await start_hub(make_hub_config(auth_header=header, listen=Address("127.0.0.1", first.port)))
        resync = await proc.event()
        assert resync["event"] == "resync"
        assert resync["channel"] == "kiosks"
        assert resync["offset"] == 0
        await publish_http(http, second, "kiosks", "after")
        assert await proc.event() == {"channel": "kiosks", "offset": 1, "data": "after"}

        status, out, err = await proc.finish(signal.SIGINT)
    assert status == 0
    assert out == ""
    assert KIOSK_TOKEN not in err
    assert "Traceback" not in err


async def test_listen_exits_1_with_one_line_when_refused(hub: HubServer) -> None:
    env = {"WSGATE_TOKEN": "wrong-token-value"}
    async with listen("--url", ws_url(hub), "--channel", "kiosks", "--origin", ORIGIN, env=env) as proc:
        status, out, err = await proc.finish()
    assert status == 1
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("wsgate listen:")]
    assert lines == ["wsgate listen: the hub refused the connection: HTTP 401 (the credential is missing, "
                     "wrong or expired)"]  # fmt: skip
    assert "wrong-token-value" not in err
    assert "Traceback" not in err


async def test_listen_exits_1_when_the_channel_is_forbidden(hub: HubServer) -> None:
    env = {"WSGATE_TOKEN": KIOSK_TOKEN}
    async with listen("--url", ws_url(hub), "--channel", "admin", "--origin", ORIGIN, env=env) as proc:
        status, _, err = await proc.finish()
    assert status == 1
    assert "subscription to admin refused (forbidden)" in err


def test_listen_without_a_token_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WSGATE_TOKEN", raising=False)
    assert main(["listen", "--url", "ws://127.0.0.1:9/ws", "--channel", "kiosks"]) == 2
    assert "WSGATE_TOKEN" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "channel", "message"),
    [
        ("http://127.0.0.1:9/ws", "kiosks", "ws:// or wss://"),
        ("ws://127.0.0.1:9/ws?token=x", "kiosks", "query string"),
        ("ws://127.0.0.1:9/ws", "no spaces", "channel"),
    ],
)
def test_listen_with_unusable_arguments_exits_2(
    url: str, channel: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSGATE_TOKEN", KIOSK_TOKEN)
    assert main(["listen", "--url", url, "--channel", channel]) == 2
    assert message in capsys.readouterr().err


def test_exported_names_exist() -> None:
    for name in wsclient.__all__:
        assert hasattr(wsclient, name), name
    assert issubclass(HubRefused, WsgateError)
