"""`wsgate gateway` as a real process: TLS termination, certificate reload on SIGHUP without dropping open
connections, static files and /api next to /ws, bounded memory for a huge message, graceful SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from tests.echo_upstream import EchoUpstream

ORIGIN = "https://kiosk.example.org"
SECRET = "process-ws-token-0123456789abcdef"
TIMEOUT = 15.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class GatewayProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stderr: list[str] = []

    async def wait_for_line(self, pattern: str) -> re.Match[str]:
        assert self.proc.stderr is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError(f"gateway ended before logging {pattern!r}: {self.stderr}")
                self.stderr.append(raw.decode())
                match = re.search(pattern, self.stderr[-1])
                if match:
                    return match


@pytest.fixture
async def api_upstream() -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path, "token": request.headers.get("token")})

    app = web.Application()
    app.router.add_get("/api/{tail:.*}", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_gateway_process_end_to_end(tmp_path: Path, api_upstream: str) -> None:
    ca = trustme.CA()
    cert_file, key_file = tmp_path / "site.pem", tmp_path / "site.key"

    def issue() -> trustme.LeafCert:
        leaf = ca.issue_cert("127.0.0.1")
        leaf.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
        leaf.private_key_pem.write_to_path(str(key_file))
        return leaf

    first_leaf = issue()
    static = tmp_path / "site"
    static.mkdir()
    (static / "index.html").write_text("<h1>kiosk</h1>")
    upstream = await EchoUpstream(token=SECRET).start()
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
listen = "127.0.0.1:0"
tls = {{ cert = "site.pem", key = "site.key" }}
public_origins = ["{ORIGIN}"]
static = "site"

[[gateway.routes]]
path = "/ws"
upstream = "{upstream.url}"
websocket = true
change_origin = true
headers = {{ token = "${{WS_TOKEN}}" }}

[[gateway.routes]]
path = "/api"
upstream = "{api_upstream}"
headers = {{ token = "${{WS_TOKEN}}" }}
""")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wsgate", "gateway", "--config", str(config),
        env={**os.environ, "WS_TOKEN": SECRET},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    gateway = GatewayProcess(proc)
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)
    try:
        port = int((await gateway.wait_for_line(r"gateway listening on https://127\.0\.0\.1:(\d+)"))[1])
        base = f"https://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(ssl=client_tls)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            async with http.get(base + "/") as response:
                assert response.status == 200
                assert await response.text() == "<h1>kiosk</h1>"
            async with http.get(base + "/api/offices") as response:
                assert await response.json() == {"path": "/api/offices", "token": SECRET}

            ws = await http.ws_connect(base.replace("https", "wss") + "/ws", headers={"Origin": ORIGIN})
            await ws.send_str("before reload")
            assert (await ws.receive(timeout=TIMEOUT)).data == "before reload"
            peer_cert = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)

            second_leaf = issue()
            assert second_leaf.cert_chain_pems[0].bytes() != first_leaf.cert_chain_pems[0].bytes()
            proc.send_signal(signal.SIGHUP)
            await gateway.wait_for_line("certificate reloaded")
            await ws.send_str("after reload")  # the open connection was not dropped
            assert (await ws.receive(timeout=TIMEOUT)).data == "after reload"
            fresh = await http.ws_connect(base.replace("https", "wss") + "/ws", headers={"Origin": ORIGIN})
            assert fresh.get_extra_info("ssl_object").getpeercert(binary_form=True) != peer_cert
            await fresh.close()

            # A 64 MiB message passes through without the gateway holding it.
            before = rss_kib(proc.pid)
            payload = os.urandom(64 * 1024 * 1024)
            big = await http.ws_connect(
                base.replace("https", "wss") + "/ws", headers={"Origin": ORIGIN}, max_msg_size=0
            )
            await big.send_bytes(payload)
            echoed = await big.receive(timeout=60)
            assert echoed.data == payload
            growth_mib = (rss_kib(proc.pid) - before) / 1024
            assert growth_mib < 24, f"gateway RSS grew by {growth_mib:.1f} MiB relaying a 64 MiB message"
            await big.close()

            closing = asyncio.create_task(ws.receive(timeout=TIMEOUT))
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), TIMEOUT) == 0
            await closing
        assert proc.stderr is not None
        gateway.stderr.append((await proc.stderr.read()).decode())
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await upstream.stop()
    logs = "".join(gateway.stderr)
    assert "ws tunnel" in logs
    assert SECRET not in logs
