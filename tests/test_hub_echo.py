"""The hub's test-only echo endpoint (`[hub] echo = true`, `GET /echo`) used by scripts/conformance, and the
close-code answer it shares with /ws."""

from __future__ import annotations

import asyncio
import logging
import struct
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ORIGIN, TIMEOUT, StartHub, kiosk_headers, make_hub_config, ws_url
from tests.wsraw import client_frame, raw_websocket
from wsgate.cli import main
from wsgate.config import HubConfig, load_config, parse_config, render_config
from wsgate.errors import ConfigError
from wsgate.hub.frames import close_reply_code
from wsgate.hub.server import HubServer


def echo_url(server: HubServer) -> str:
    return server.url.replace("http://", "ws://") + "/echo"


async def echo_hub(start_hub: StartHub, **overrides: object) -> HubServer:
    return await start_hub(make_hub_config(echo=True, **overrides))


# --- configuration ------------------------------------------------------------------------------------------


def test_echo_is_off_by_default() -> None:
    assert HubConfig().echo is False
    config = parse_config({"hub": {}}, env={})
    assert config.hub is not None
    assert config.hub.echo is False


def test_echo_is_read_validated_and_rendered() -> None:
    config = parse_config({"hub": {"echo": True}}, env={})
    assert config.hub is not None
    assert config.hub.echo is True
    assert "echo = true" in render_config(config)
    with pytest.raises(ConfigError) as err:
        parse_config({"hub": {"echo": "yes"}}, env={})
    assert err.value.key == "hub.echo"


def test_rendered_echo_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    config = parse_config({"hub": {"echo": True}}, env={})
    path.write_text(render_config(config))
    assert load_config(path, env={}) == config


def test_check_warns_when_echo_is_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hub.toml"
    path.write_text("[hub]\necho = true\n")
    assert main(["check", "--config", str(path)]) == 0
    assert "echo = true opens /echo without a credential" in capsys.readouterr().out


# --- the endpoint -------------------------------------------------------------------------------------------


async def test_no_echo_route_unless_enabled(hub: HubServer, http: aiohttp.ClientSession) -> None:
    async with http.get(hub.url + "/echo") as response:
        assert response.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(echo_url(hub), headers=kiosk_headers())
    assert err.value.status == 404


async def test_echoes_text_and_binary_without_a_credential(
    start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    server = await echo_hub(start_hub)
    async with http.ws_connect(echo_url(server), headers={"Origin": ORIGIN}) as ws:
        await ws.send_str("héllo")
        assert (await ws.receive(timeout=TIMEOUT)).data == "héllo"
        await ws.send_bytes(b"\x00\xff" * 1000)
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type is aiohttp.WSMsgType.BINARY
        assert message.data == b"\x00\xff" * 1000


async def test_negotiates_permessage_deflate(start_hub: StartHub, http: aiohttp.ClientSession) -> None:
    server = await echo_hub(start_hub)
    async with http.ws_connect(echo_url(server), headers={"Origin": ORIGIN}, compress=15) as ws:
        assert ws.compress == 15
        await ws.send_str("a" * 10_000)
        assert (await ws.receive(timeout=TIMEOUT)).data == "a" * 10_000


async def test_ws_still_wants_a_credential(start_hub: StartHub, http: aiohttp.ClientSession) -> None:
    server = await echo_hub(start_hub)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(ws_url(server), headers={"Origin": ORIGIN})
    assert err.value.status == 401


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example.com"}, 403),
        ({}, 403),  # allow_missing_origin = false
    ],
)
async def test_origin_policy_applies(
    start_hub: StartHub, http: aiohttp.ClientSession, headers: dict[str, str], status: int
) -> None:
    server = await echo_hub(start_hub)
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await http.ws_connect(echo_url(server), headers=headers)
    assert err.value.status == status


async def test_not_an_upgrade_is_426(start_hub: StartHub, http: aiohttp.ClientSession) -> None:
    server = await echo_hub(start_hub)
    async with http.get(server.url + "/echo", headers={"Origin": ORIGIN}) as response:
        assert response.status == 426


async def test_missing_origin_admitted_when_allowed(start_hub: StartHub, http: aiohttp.ClientSession) -> None:
    server = await echo_hub(start_hub, allow_missing_origin=True)
    async with http.ws_connect(echo_url(server)) as ws:
        await ws.send_str("ping?")
        assert (await ws.receive(timeout=TIMEOUT)).data == "ping?"


async def test_echo_connections_count_against_max_connections(
    start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    server = await echo_hub(start_hub, limits={"max_connections": 1})
    async with http.ws_connect(echo_url(server), headers={"Origin": ORIGIN}):
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await http.ws_connect(echo_url(server), headers={"Origin": ORIGIN})
        assert err.value.status == 429


async def test_a_message_over_max_message_closes_with_1009(
    start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    server = await echo_hub(start_hub, limits={"max_message": 1024})
    async with http.ws_connect(echo_url(server), headers={"Origin": ORIGIN}) as ws:
        await ws.send_str("x" * 1025)
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1009


async def access_line(caplog: pytest.LogCaptureFixture, prefix: str) -> str:
    """The first wsgate.access line starting with ``prefix``, waiting for it (the handler logs as it ends)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            for record in caplog.records:
                if record.name == "wsgate.access" and record.getMessage().startswith(prefix):
                    return record.getMessage()
            await asyncio.sleep(0.01)


async def test_invalid_utf8_fails_with_1007(start_hub: StartHub, caplog: pytest.LogCaptureFixture) -> None:
    server = await echo_hub(start_hub)
    caplog.set_level("INFO", logger="wsgate.access")
    raw = await raw_websocket("127.0.0.1", server.port, {"Origin": ORIGIN}, path="/echo")
    try:
        assert raw.status == 101
        raw.writer.write(client_frame(0x1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80"))
        code, frames = await asyncio.wait_for(raw.read_until_close(), TIMEOUT)
        assert (code, frames) == (1007, [])
    finally:
        raw.close()  # without answering the close frame, as Autobahn does after a failure
    # The code the hub failed the connection with, not the 1006 aiohttp records for the dropped connection.
    assert "code=1007" in await access_line(caplog, "echo close")


async def test_a_client_that_vanishes_mid_echo_is_a_lost_connection_not_an_error(
    start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    server = await echo_hub(start_hub, limits={"max_message": 1 << 21, "send_queue": 1 << 21})
    caplog.set_level("INFO")
    raw = await raw_websocket("127.0.0.1", server.port, {"Origin": ORIGIN}, path="/echo", receive_buffer=4096)
    raw.writer.write(client_frame(0x2, b"x" * (1 << 20)))
    await raw.writer.drain()
    await raw.reader.readexactly(2)  # the echo has started, and cannot finish: nobody reads it
    raw.writer.transport.abort()  # unread data in the buffer: the kernel answers with RST
    assert "code=1006" in await access_line(caplog, "echo close")
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


async def test_shutdown_closes_echo_connections_with_1001(
    start_hub: StartHub, http: aiohttp.ClientSession
) -> None:
    server = await echo_hub(start_hub)
    async with http.ws_connect(echo_url(server), headers={"Origin": ORIGIN}) as ws:
        stopping = asyncio.create_task(server.stop())
        message = await ws.receive(timeout=TIMEOUT)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert message.data == 1001
        await asyncio.wait_for(stopping, TIMEOUT)


# --- answering a close frame (RFC 6455 §7.4), /echo and /ws alike -------------------------------------------


@pytest.mark.parametrize(
    ("received", "answer"),
    [
        (0, 1000),  # a close frame without a code
        (1000, 1000),
        (1001, 1000),
        (1003, 1000),
        (1007, 1000),
        (1011, 1000),
        (1014, 1000),
        (3000, 1000),
        (4999, 1000),
        (999, 1002),
        (1004, 1002),  # reserved
        (1005, 1002),  # reserved for "no code received": never on the wire
        (1006, 1002),  # reserved for "closed abnormally": never on the wire
        (1015, 1002),  # reserved for "TLS failure": never on the wire
        (1016, 1002),
        (2999, 1002),
        (5000, 1002),
        (65535, 1002),
    ],
)
def test_close_reply_code(received: int, answer: int) -> None:
    assert close_reply_code(received) == answer


async def close_with(path: str, server: HubServer, headers: dict[str, str], code: int) -> int | None:
    raw = await raw_websocket("127.0.0.1", server.port, headers, path=path)
    try:
        assert raw.status == 101
        raw.writer.write(client_frame(0x8, struct.pack("!H", code) + b"bye"))
        answer, _ = await asyncio.wait_for(raw.read_until_close(), TIMEOUT)
        return answer
    finally:
        raw.close()


@pytest.mark.parametrize(("code", "answer"), [(1000, 1000), (1001, 1000), (4000, 1000), (1006, 1002)])
async def test_close_codes_are_answered_on_echo_and_ws(start_hub: StartHub, code: int, answer: int) -> None:
    # aiohttp (3.14.5) lets a 1006 on the wire through and would answer it with 1000 (Autobahn case 7.9.5).
    server = await echo_hub(start_hub)
    assert await close_with("/echo", server, {"Origin": ORIGIN}, code) == answer
    assert await close_with("/ws", server, kiosk_headers(), code) == answer


@pytest.mark.parametrize("path", ["/ws", "/echo"])
async def test_a_client_close_is_logged_with_its_code(
    start_hub: StartHub, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    server = await echo_hub(start_hub)
    caplog.set_level("INFO", logger="wsgate.access")
    url = server.url.replace("http://", "ws://") + path
    ws = await http.ws_connect(url, headers=kiosk_headers())
    await ws.close(code=4001, message=b"kiosk leaving")
    assert "code=4001" in await access_line(caplog, "ws close" if path == "/ws" else "echo close")
