"""One hub process and one gateway process in front of it serve the whole package; each test measures what it
does to them. Both must still be running, answer /healthz, have logged no traceback and exit 0 on SIGTERM at
the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.support import (
    HANDSHAKE_TIMEOUT,
    MAX_MESSAGE,
    ORIGIN,
    PUBLISH_TOKEN,
    SEND_QUEUE,
    WS_TOKEN,
    ServerProcess,
    Target,
    Upstreams,
    start_process,
)

ENV = {"WS_TOKEN": WS_TOKEN, "WSGATE_PUBLISH_TOKEN": PUBLISH_TOKEN}


def hub_config(handshake_timeout: float = HANDSHAKE_TIMEOUT) -> str:
    return f"""
[hub]
listen = "127.0.0.1:0"
allowed_origins = ["{ORIGIN}"]
auth_header = "token"
[hub.limits]
max_message = "{MAX_MESSAGE}B"
send_queue = "{SEND_QUEUE}B"
handshake_timeout = "{handshake_timeout}s"

[[hub.tokens]]
name = "kiosk"
token = "${{WS_TOKEN}}"
subscribe = ["*"]
publish = ["*"]

[hub.publish_api]
tokens = ["${{WSGATE_PUBLISH_TOKEN}}"]
"""


def gateway_config(hub_port: int, upstreams: Upstreams) -> str:
    return f"""
[gateway]
listen = "127.0.0.1:0"
public_origins = ["{ORIGIN}"]
limits = {{ handshake_timeout = "{HANDSHAKE_TIMEOUT}s", upstream_timeout = "5s" }}

[[gateway.routes]]
path = "/ws"
upstream = "ws://127.0.0.1:{hub_port}/ws"
websocket = true
headers = {{ token = "${{WS_TOKEN}}" }}

[[gateway.routes]]
path = "/deflate"
upstream = "ws://127.0.0.1:{upstreams.deflate_port}/"
websocket = true

[[gateway.routes]]
path = "/recorded-ws"
upstream = "ws://127.0.0.1:{upstreams.recorder_port}/recorded-ws"
websocket = true
headers = {{ token = "${{WS_TOKEN}}" }}

[[gateway.routes]]
path = "/api"
upstream = "http://127.0.0.1:{upstreams.recorder_port}"
headers = {{ token = "${{WS_TOKEN}}" }}
"""


def _finish(server: ServerProcess) -> None:
    assert server.alive(), f"{server.name} died during the hostile tests:\n{server.log()}"
    status = server.stop()
    log = server.log()
    assert "Traceback" not in log, f"{server.name} logged a traceback:\n{log}"
    assert status == 0, f"{server.name} exited with {status}:\n{log}"


@pytest.fixture(scope="package")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="package")
def hub_process(workdir: Path) -> Iterator[ServerProcess]:
    config = workdir / "hub.toml"
    config.write_text(hub_config())
    server = start_process("hub", config, ENV, workdir / "hub.log")
    yield server
    _finish(server)


@pytest.fixture(scope="package")
def upstreams() -> Iterator[Upstreams]:
    servers = Upstreams().start()
    yield servers
    servers.stop()


@pytest.fixture(scope="package")
def gateway_process(
    workdir: Path, hub_process: ServerProcess, upstreams: Upstreams
) -> Iterator[ServerProcess]:
    config = workdir / "gateway.toml"
    config.write_text(gateway_config(hub_process.port, upstreams))
    server = start_process("gateway", config, ENV, workdir / "gateway.log")
    yield server
    _finish(server)


@pytest.fixture
def hub_target(hub_process: ServerProcess) -> Target:
    return Target("hub", hub_process, {"token": WS_TOKEN, "Origin": ORIGIN})


@pytest.fixture
def gateway_target(gateway_process: ServerProcess) -> Target:
    return Target("gateway", gateway_process, {"Origin": ORIGIN})


@pytest.fixture(params=["hub", "gateway"])
def target(request: pytest.FixtureRequest) -> Target:
    """The hub directly, and the gateway relaying to it: whatever the hub enforces must hold through both."""
    name = request.param
    fixture: Target = request.getfixturevalue(f"{name}_target")
    return fixture
