"""The wsgate command as users run it: --help everywhere, exit statuses, check, token, publish, and real
hub / up processes stopped by signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import (
    KEY_NEW,
    KIOSK_TOKEN,
    ORIGIN,
    PUBLISH_TOKEN,
    TIMEOUT,
    Connect,
    receive_json,
    subscribe,
)
from wsgate.auth.tokens import TokenVerifier
from wsgate.cli import main
from wsgate.hub.server import HubServer
from wsgate.secret import Secret

COMMANDS = ["up", "hub", "gateway", "publish", "listen", "token", "probe", "check"]

HUB_TOML = """
[hub]
listen = "127.0.0.1:0"
allowed_origins = ["https://kiosk.example.org"]
auth_header = "token"

[[hub.tokens]]
name = "kiosk"
token = "${WS_TOKEN}"
subscribe = ["kiosks"]

[hub.publish_api]
tokens = ["${file:publish.token}"]
"""


@pytest.fixture
def hub_toml(tmp_path: Path) -> Path:
    (tmp_path / "publish.token").write_text(PUBLISH_TOKEN + "\n")
    path = tmp_path / "hub.toml"
    path.write_text(HUB_TOML)
    return path


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    assert "usage: wsgate " + command in capsys.readouterr().out


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["hub", "--no-such-flag"])
    assert exited.value.code == 2


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])  # noqa: S104 - the refusal is under test
def test_up_refuses_a_wildcard_host_because_it_names_the_allowed_origin(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", "--host", host]) == 2
    assert "not a wildcard" in capsys.readouterr().err


def test_hub_without_configuration_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WSGATE_CONFIG", raising=False)
    assert main(["hub"]) == 2
    assert "--config" in capsys.readouterr().err


def test_check_prints_the_effective_configuration_with_secrets_masked(
    hub_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WS_TOKEN", KIOSK_TOKEN)
    assert main(["check", "--config", str(hub_toml)]) == 0
    out = capsys.readouterr().out
    assert "hub: would listen on 127.0.0.1:0" in out
    assert 'auth_header = "token"' in out
    assert "max_message" in out  # defaults are shown too
    assert KIOSK_TOKEN not in out
    assert PUBLISH_TOKEN not in out
    assert "***" in out


def test_check_reports_a_bad_key_in_one_line_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[hub]\nlimits = { max_mesage = "64KiB" }\n')
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "hub.limits.max_mesage" in err
    assert "max_message" in err  # the suggestion


def test_check_names_a_missing_environment_variable(
    hub_toml: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WS_TOKEN", raising=False)
    assert main(["check", "--config", str(hub_toml)]) == 2
    assert "WS_TOKEN" in capsys.readouterr().err


def test_token_mints_a_token_the_hub_accepts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSGATE_SIGNING_KEY", KEY_NEW)
    argv = ["token", "--sub", "kiosk-7", "--channel", "kiosks", "--channel", "kiosk:7", "--ttl", "5m"]
    assert main([*argv, "--kid", "2026-11", "--publish"]) == 0
    token = capsys.readouterr().out.strip()
    grant = TokenVerifier((), {"2026-11": Secret(KEY_NEW)}).verify(token)
    assert grant.subject == "kiosk-7"
    assert grant.subscribe == ("kiosks", "kiosk:7")
    assert grant.publish == ("kiosks", "kiosk:7")
    assert grant.expires_at is not None
    assert 290 < grant.expires_at - time.time() <= 300


def test_token_without_a_key_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WSGATE_SIGNING_KEY", raising=False)
    assert main(["token", "--sub", "s", "--channel", "c"]) == 2
    assert "WSGATE_SIGNING_KEY" in capsys.readouterr().err


async def test_publish_prints_the_offset_and_reaches_subscribers(
    hub: HubServer, connect: Connect, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = await connect(hub)
    await subscribe(ws, "kiosks")
    monkeypatch.setenv("WSGATE_PUBLISH_TOKEN", PUBLISH_TOKEN)
    argv = ["publish", "--url", hub.url, "--channel", "kiosks", '{"action": "reset"}']
    assert await asyncio.to_thread(main, argv) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert (await receive_json(ws))["data"] == {"action": "reset"}


async def test_publish_failures_exit_1_with_one_line(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WSGATE_PUBLISH_TOKEN", "wrong-token")
    assert await asyncio.to_thread(main, ["publish", "--url", hub.url, "--channel", "kiosks", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "401" in err
    assert "wrong-token" not in err
    monkeypatch.setenv("WSGATE_PUBLISH_TOKEN", PUBLISH_TOKEN)
    assert await asyncio.to_thread(main, ["publish", "--url", hub.url, "--channel", "kiosks", "{bad"]) == 2


# --- real processes ------------------------------------------------------------------------------------


class Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.stdout: list[str] = []
        self.stderr: list[str] = []

    async def wait_for_line(self, pattern: str, *, stream: str = "stderr") -> re.Match[str]:
        """Read the process's output until a line matches (a readiness signal, not a sleep)."""
        reader = self.proc.stderr if stream == "stderr" else self.proc.stdout
        lines = self.stderr if stream == "stderr" else self.stdout
        assert reader is not None
        async with asyncio.timeout(TIMEOUT):
            while True:
                raw = await reader.readline()
                if not raw:
                    raise AssertionError(f"process ended before printing {pattern!r}: {lines}")
                line = raw.decode()
                lines.append(line)
                match = re.search(pattern, line)
                if match:
                    return match

    async def finish(self, signum: int) -> int:
        self.proc.send_signal(signum)
        out, err = await asyncio.wait_for(self.proc.communicate(), TIMEOUT)
        self.stdout.append(out.decode())
        self.stderr.append(err.decode())
        assert self.proc.returncode is not None
        return self.proc.returncode


@asynccontextmanager
async def wsgate_process(*args: str, env: dict[str, str], cwd: Path) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wsgate", *args,
        env={**os.environ, **env}, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    process = Process(proc)
    try:
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_hub_process_serves_and_drains_on_sigterm_without_logging_secrets(
    hub_toml: Path, http: aiohttp.ClientSession
) -> None:
    async with wsgate_process("hub", "--config", str(hub_toml), env={"WS_TOKEN": KIOSK_TOKEN},
                              cwd=hub_toml.parent) as hub:  # fmt: skip
        port = int((await hub.wait_for_line(r"hub listening on http://127\.0\.0\.1:(\d+)"))[1])
        url = f"ws://127.0.0.1:{port}/ws"
        ws = await http.ws_connect(url, headers={"token": KIOSK_TOKEN, "Origin": ORIGIN})
        await subscribe(ws, "kiosks")
        # A refused attempt that carries secrets where a careless server would log them.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(url + f"?token={KIOSK_TOKEN}", headers={"token": "wrong-secret-value"})

        closing = asyncio.create_task(ws.receive(timeout=TIMEOUT))
        await hub.wait_for_line(r"ws reject status=\d+")
        status = await hub.finish(signal.SIGTERM)
        message = await closing
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1001
        assert status == 0
    logs = "".join(hub.stderr)
    assert "ws open" in logs
    assert "ws close" in logs
    assert "code=1001" in logs
    for secret in (KIOSK_TOKEN, PUBLISH_TOKEN, "wrong-secret-value"):
        assert secret not in logs


async def test_up_runs_the_kiosk_system_and_prints_only_the_admin_password(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    env = {"WSGATE_ADMIN_PASSWORD": ""}
    async with wsgate_process("up", "--port", "0", env=env, cwd=tmp_path) as up:
        match = await up.wait_for_line(r"running at (http://127\.0\.0\.1:\d+)", stream="stdout")
        base = match[1]
        password = (
            await up.wait_for_line(r"admin password \(generated, shown once\): (\S+)", stream="stdout")
        )[1]
        async with http.get(base + "/") as response:
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
        async with http.get(base + "/api/offices") as response:
            assert len((await response.json())["offices"]) > 3
        ws = await http.ws_connect(base.replace("http", "ws") + "/ws?kiosk=lobby", headers={"Origin": base})
        await subscribe(ws, "kiosks")
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(
                base.replace("http", "ws") + "/ws?kiosk=x", headers={"Origin": "http://evil.example"}
            )
        assert refused.value.status == 403
        async with http.post(
            base + "/admin/login", data={"password": password}, allow_redirects=False
        ) as response:
            assert response.status == 303
        closing = asyncio.create_task(ws.receive(timeout=TIMEOUT))
        assert await up.finish(signal.SIGINT) == 0
        assert (await closing).type is aiohttp.WSMsgType.CLOSE
    output = "".join(up.stdout + up.stderr)
    assert output.count(password) == 1


async def test_up_does_not_print_a_password_it_was_given(tmp_path: Path) -> None:
    chosen = "chosen-admin-password-0123"
    async with wsgate_process("up", "--port", "0", env={"WSGATE_ADMIN_PASSWORD": chosen}, cwd=tmp_path) as up:
        await up.wait_for_line(r"Ctrl-C stops it", stream="stdout")
        assert await up.finish(signal.SIGTERM) == 0
    output = "".join(up.stdout + up.stderr)
    assert chosen not in output
    assert "admin password" not in output
