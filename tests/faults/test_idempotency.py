"""Publisher retries: `POST /api/publish` with an `Idempotency-Key` is applied once, however often it is sent.

The store and the header syntax directly (with a fake clock), then the hub's HTTP API, the Python client, and
`wsgate publish`, whose retry after a lost answer or a timeout must carry the same key."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import (
    ADMIN_TOKEN,
    PUBLISH_TOKEN,
    Connect,
    StartHub,
    bearer,
    publish_http,
    receive_json,
    subscribe,
)
from wsgate import cli
from wsgate import client as wsclient
from wsgate.cli import main
from wsgate.hub.broker.base import Published
from wsgate.hub.broker.memory import MemoryBroker
from wsgate.hub.idempotency import (
    MAX_KEY_LENGTH,
    IdempotencyStore,
    InvalidKey,
    KeyInFlight,
    KeyReused,
    fingerprint,
    format_key,
    parse_key,
)
from wsgate.hub.server import HubServer

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"


# --- the header ---------------------------------------------------------------------------------------------


def test_a_key_is_read_bare_or_as_the_drafts_quoted_string() -> None:
    assert parse_key([]) is None
    assert parse_key([KEY]) == KEY
    assert parse_key([f'"{KEY}"']) == KEY
    assert parse_key([f' "{KEY}" ']) == KEY  # optional whitespace around a field value
    assert parse_key([r'"a\"b\\c"']) == 'a"b\\c'
    assert parse_key(["k" * MAX_KEY_LENGTH]) == "k" * MAX_KEY_LENGTH


@pytest.mark.parametrize(
    "values",
    [
        [""],
        ['""'],
        ["k" * (MAX_KEY_LENGTH + 1)],
        ['"' + "k" * (MAX_KEY_LENGTH + 1) + '"'],
        ["two words"],
        ['"two words"'],
        ["tab\tinside"],
        ["caf\u00e9"],
        ["nul\x00"],
        ['"unterminated'],
        ['"a"b"'],
        [r'"bad\escape"'],
        ['"'],
        [KEY, KEY],  # the draft: at most one Idempotency-Key per request
    ],
)
def test_a_malformed_key_is_refused_without_repeating_it(values: list[str]) -> None:
    with pytest.raises(InvalidKey) as refused:
        parse_key(values)
    assert refused.value.status == 400
    for value in values:
        if len(value) > 3:
            assert value not in str(refused.value)


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255))
def test_every_valid_key_survives_the_round_trip_through_the_header(key: str) -> None:
    assert parse_key([format_key(key)]) == key


@pytest.mark.parametrize("key", ["", "with space", "k" * 256, "\u00e9"])
def test_format_key_refuses_what_the_hub_would_refuse(key: str) -> None:
    with pytest.raises(ValueError, match="visible ASCII"):
        format_key(key)


def test_the_fingerprint_is_the_channel_and_the_data() -> None:
    assert fingerprint("kiosks", '{"a":1}') == fingerprint("kiosks", '{"a":1}')
    assert fingerprint("kiosks", '{"a":1}') != fingerprint("kiosks", '{"a":2}')
    assert fingerprint("kiosks", "1") != fingerprint("kiosk", "s1")


# --- the store ----------------------------------------------------------------------------------------------


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


ANSWER = {"channel": "kiosks", "epoch": "e", "offset": 1}
PRINT = fingerprint("kiosks", "1")
OTHER = fingerprint("kiosks", "2")


def test_a_finished_request_is_answered_again_then_forgotten_after_the_window() -> None:
    clock = Clock()
    store = IdempotencyStore(window=60.0, clock=clock)
    assert store.begin("publish_api:publish-api", KEY, PRINT) is None
    store.finish("publish_api:publish-api", KEY, PRINT, ANSWER)
    clock.now += 59.9
    assert store.begin("publish_api:publish-api", KEY, PRINT) == ANSWER
    clock.now += 0.1  # the window counts from the answer, not from the replays
    assert store.begin("publish_api:publish-api", KEY, PRINT) is None


def test_another_payload_is_422_and_a_request_in_flight_is_409() -> None:
    store = IdempotencyStore(window=60.0, clock=Clock())
    assert store.begin("s", KEY, PRINT) is None
    with pytest.raises(KeyInFlight) as in_flight:
        store.begin("s", KEY, PRINT)
    assert in_flight.value.status == 409
    with pytest.raises(KeyReused) as reused:
        store.begin("s", KEY, OTHER)
    assert reused.value.status == 422
    store.finish("s", KEY, PRINT, ANSWER)
    with pytest.raises(KeyReused):
        store.begin("s", KEY, OTHER)


def test_keys_are_scoped_to_the_credential() -> None:
    store = IdempotencyStore(window=60.0, clock=Clock())
    assert store.begin("static:alice", KEY, PRINT) is None
    store.finish("static:alice", KEY, PRINT, ANSWER)
    # Another principal with the same key neither sees alice's answer nor collides with it.
    assert store.begin("static:bob", KEY, OTHER) is None


def test_an_abandoned_request_can_be_tried_again() -> None:
    store = IdempotencyStore(window=60.0, clock=Clock())
    assert store.begin("s", KEY, PRINT) is None
    store.abandon("s", KEY)
    assert store.begin("s", KEY, PRINT) is None
    store.finish("s", KEY, PRINT, ANSWER)
    store.abandon("s", KEY)  # only requests in flight are abandoned
    assert store.begin("s", KEY, PRINT) == ANSWER


def test_the_store_is_bounded_and_forgets_the_least_recently_used_key_first() -> None:
    store = IdempotencyStore(window=60.0, max_keys=3, clock=Clock())
    for key in ("a", "b", "c"):
        store.begin("s", key, PRINT)
        store.finish("s", key, PRINT, {"key": key})
    assert store.begin("s", "a", PRINT) == {"key": "a"}  # "a" is now the most recently used
    store.begin("s", "d", PRINT)
    store.finish("s", "d", PRINT, {"key": "d"})
    assert len(store) == 3
    assert store.begin("s", "b", PRINT) is None  # "b" was forgotten
    assert store.begin("s", "a", PRINT) == {"key": "a"}


def test_expired_keys_make_room_before_live_ones_are_evicted() -> None:
    clock = Clock()
    store = IdempotencyStore(window=10.0, max_keys=1000, clock=clock)
    for n in range(500):
        store.begin("s", f"old{n}", PRINT)
        store.finish("s", f"old{n}", PRINT, ANSWER)
    clock.now += 11
    store.begin("s", "new", PRINT)
    assert len(store) == 1


async def test_run_applies_the_action_once_per_key() -> None:
    store = IdempotencyStore(window=60.0, clock=Clock())
    calls: list[int] = []

    async def action() -> dict[str, Any]:
        calls.append(1)
        return {"offset": len(calls)}

    assert await store.run("s", KEY, PRINT, action) == ({"offset": 1}, False)
    assert await store.run("s", KEY, PRINT, action) == ({"offset": 1}, True)
    assert await store.run("s", None, PRINT, action) == ({"offset": 2}, False)  # no key: no memory
    assert await store.run("s", None, PRINT, action) == ({"offset": 3}, False)

    async def failing() -> dict[str, Any]:
        raise RuntimeError("broker down")

    with pytest.raises(RuntimeError):
        await store.run("s", "k2", PRINT, failing)
    assert await store.run("s", "k2", PRINT, action) == ({"offset": 4}, False)


def test_nonsense_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        IdempotencyStore(window=0)
    with pytest.raises(ValueError, match="max_keys"):
        IdempotencyStore(window=1, max_keys=0)


# --- the hub's HTTP API -------------------------------------------------------------------------------------


async def post(
    http: aiohttp.ClientSession,
    hub: HubServer,
    data: Any,
    key: str | list[str] | None,
    *,
    token: str = PUBLISH_TOKEN,
    channel: str = "kiosks",
) -> tuple[int, dict[str, Any], Any]:
    headers: list[tuple[str, str]] = list(bearer(token).items())
    for value in [key] if isinstance(key, str) else key or []:
        headers.append(("Idempotency-Key", value))
    async with http.post(
        hub.url + "/api/publish", json={"channel": channel, "data": data}, headers=headers
    ) as response:
        body = await response.json() if response.content_type == "application/json" else {}
        return response.status, body, response.headers


async def test_the_same_key_twice_publishes_once_and_answers_the_same(
    hub: HubServer, http: aiohttp.ClientSession, connect: Connect
) -> None:
    ws = await connect(hub)
    await subscribe(ws, "kiosks")
    status, first, headers = await post(http, hub, {"action": "reset"}, KEY)
    assert status == 200
    assert "Idempotent-Replayed" not in headers
    status, again, headers = await post(http, hub, {"action": "reset"}, f'"{KEY}"')  # the draft's form
    assert status == 200
    assert again == first == {"channel": "kiosks", "epoch": first["epoch"], "offset": 1}
    assert headers["Idempotent-Replayed"] == "true"
    # Nothing was published the second time: the next message is offset 2, and the subscriber got one.
    assert (await publish_http(http, hub, "kiosks", "next"))["offset"] == 2
    assert [(await receive_json(ws))["data"] for _ in range(2)] == [{"action": "reset"}, "next"]


async def test_reusing_a_key_for_another_message_is_422(hub: HubServer, http: aiohttp.ClientSession) -> None:
    assert (await post(http, hub, 1, KEY))[0] == 200
    status, body, _ = await post(http, hub, 2, KEY)
    assert status == 422
    assert body["error"] == "idempotency_key_reused"
    status, body, _ = await post(http, hub, 1, KEY, channel="kiosk:1")  # another channel is another request
    assert status == 422
    assert (await publish_http(http, hub, "kiosks", "next"))["offset"] == 2


async def test_keys_of_different_credentials_do_not_meet(hub: HubServer, http: aiohttp.ClientSession) -> None:
    assert (await post(http, hub, 1, KEY))[1]["offset"] == 1
    status, body, headers = await post(http, hub, 1, KEY, token=ADMIN_TOKEN)
    assert (status, body["offset"]) == (200, 2)
    assert "Idempotent-Replayed" not in headers


@pytest.mark.parametrize("key", ["k" * 256, "two words", '"unterminated', [KEY, KEY]])
async def test_a_malformed_key_is_400_and_publishes_nothing(
    hub: HubServer, http: aiohttp.ClientSession, key: str | list[str]
) -> None:
    status, body, _ = await post(http, hub, 1, key)
    assert status == 400
    assert body["error"] == "bad_request"
    assert "Idempotency-Key" in body["message"]
    assert (await publish_http(http, hub, "kiosks", "next"))["offset"] == 1


async def test_the_credential_is_checked_before_the_key(hub: HubServer, http: aiohttp.ClientSession) -> None:
    assert (await post(http, hub, 1, "two words", token="wrong-token"))[0] == 401


class GatedBroker(MemoryBroker):
    """A broker whose publishes wait for a gate, and can fail once: a slow or failing backend."""

    def __init__(self) -> None:
        super().__init__(history_size=100, history_ttl=600.0)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.fail_next = False

    async def publish(self, channel: str, data: str) -> Published:
        self.entered.set()
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the backend went away")
        return await super().publish(channel, data)


async def test_a_retry_while_the_first_request_is_in_flight_is_409_and_a_failure_is_not_remembered(
    start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    broker = GatedBroker()
    hub = await start_hub(broker=broker)
    first = asyncio.create_task(post(http, hub, 1, KEY))
    await broker.entered.wait()
    status, body, _ = await post(http, hub, 1, KEY)
    assert (status, body["error"]) == (409, "idempotency_key_in_flight")
    broker.fail_next = True
    broker.gate.set()
    assert (await first)[0] == 500  # the broker failed: nothing was published, nothing is remembered
    status, body, headers = await post(http, hub, 1, KEY)
    assert (status, body["offset"]) == (200, 1)
    assert "Idempotent-Replayed" not in headers


# --- the Python client and `wsgate publish` -----------------------------------------------------------------


async def test_the_python_client_sends_the_key(hub: HubServer) -> None:
    def publish_twice() -> list[int]:
        return [
            wsclient.publish(hub.url, "kiosks", {"n": 1}, token=PUBLISH_TOKEN, idempotency_key=KEY)
            for _ in range(2)
        ]

    assert await asyncio.to_thread(publish_twice) == [1, 1]
    with pytest.raises(ValueError, match="visible ASCII"):
        wsclient.publish(hub.url, "kiosks", 1, token=PUBLISH_TOKEN, idempotency_key="not a key")


@dataclass
class FlakyProxy:
    """A hop in front of the hub that forwards every request, and for the first one loses the answer: it
    closes the connection ("drop") or keeps it silent until the client gives up ("hold")."""

    target: str
    first: str
    keys: list[str | None] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            lines = head.split("\r\n")
            path = lines[0].split(" ")[1]
            headers = dict(line.split(": ", 1) for line in lines[1:] if line)
            lowered = {name.lower(): value for name, value in headers.items()}
            body = await reader.readexactly(int(lowered.get("content-length", "0")))
            self.keys.append(lowered.get("idempotency-key"))
            forward = {name: value for name, value in headers.items() if name.lower() != "host"}
            async with self.http.post(self.target + path, data=body, headers=forward) as response:
                status, answer = response.status, await response.read()
            if len(self.keys) == 1 and self.first == "drop":
                return  # published, but the answer is lost
            if len(self.keys) == 1 and self.first == "hold":
                await reader.read()  # until the client gives up and closes
                return
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(answer)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


MakeProxy = Callable[[str], Awaitable[FlakyProxy]]


@pytest.fixture
async def flaky(hub: HubServer, http: aiohttp.ClientSession) -> AsyncIterator[MakeProxy]:
    proxies: list[FlakyProxy] = []

    async def make(first: str) -> FlakyProxy:
        proxy = FlakyProxy(hub.url, first)
        await proxy.start(http)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.stop()


@pytest.mark.parametrize("first", ["drop", "hold"])
async def test_wsgate_publish_retries_a_lost_answer_once_with_the_same_key(
    first: str,
    hub: HubServer,
    connect: Connect,
    http: aiohttp.ClientSession,
    flaky: MakeProxy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ws = await connect(hub)
    await subscribe(ws, "kiosks")
    proxy = await flaky(first)
    monkeypatch.setenv("WSGATE_PUBLISH_TOKEN", PUBLISH_TOKEN)
    monkeypatch.setattr(cli, "PUBLISH_TIMEOUT", 0.5)  # "hold" makes the first attempt time out
    monkeypatch.setattr(cli, "PUBLISH_RETRY_DELAY", 0.0)
    argv = ["publish", "--url", proxy.url, "--channel", "kiosks", '{"action": "reset"}']
    assert await asyncio.to_thread(main, argv) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "1"
    assert "retrying once with the same Idempotency-Key" in err
    first_key, second_key = proxy.keys
    assert first_key is not None
    assert first_key == second_key
    assert re.fullmatch(r'"[0-9a-f-]{36}"', first_key)  # a random UUID, as the draft recommends
    # Applied once: the subscriber got one message, and the hub's next offset is 2.
    assert (await receive_json(ws))["data"] == {"action": "reset"}
    assert (await publish_http(http, hub, "kiosks", "next"))["offset"] == 2
    assert (await receive_json(ws))["data"] == "next"


async def test_wsgate_publish_does_not_retry_a_refusal(
    flaky: MakeProxy,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    proxy = await flaky("pass")
    monkeypatch.setenv("WSGATE_PUBLISH_TOKEN", "wrong-token")
    assert await asyncio.to_thread(main, ["publish", "--url", proxy.url, "--channel", "kiosks", "1"]) == 1
    assert "401" in capsys.readouterr().err
    assert len(proxy.keys) == 1


async def test_each_wsgate_publish_is_a_new_message(hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSGATE_PUBLISH_TOKEN", PUBLISH_TOKEN)
    argv = ["publish", "--url", hub.url, "--channel", "kiosks", "1"]
    assert [await asyncio.to_thread(main, argv) for _ in range(2)] == [0, 0]
    assert len(hub.hub.idempotency) == 2  # two commands, two keys
