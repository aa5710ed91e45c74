"""``wsgate up`` for now: a hub on the given address with freshly generated credentials.

The credentials are written to ``.wsgate/up.env`` (mode 0600) rather than printed, so they reach neither the
terminal's scrollback nor a log. The full kiosk system (gateway, demo API, kiosk and admin pages) will
replace this.
"""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path

from wsgate import logs
from wsgate.config import Address, HubConfig, PublishApiConfig, StaticToken
from wsgate.secret import Secret

ENV_FILE = Path(".wsgate/up.env")


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{name}={value}\n" for name, value in values.items())


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def run(*, host: str, port: int) -> int:
    from wsgate.cli import run_async, serve_until_signalled
    from wsgate.hub.server import HubServer

    if port == 0:
        # The allowed Origin names the port, so it must be known before the hub starts.
        port = free_port(host)
    client_token = secrets.token_urlsafe(32)
    publish_token = secrets.token_urlsafe(32)
    origin_host = f"[{host}]" if ":" in host else host
    config = HubConfig(
        listen=Address(host, port),
        allowed_origins=(f"http://{origin_host}:{port}",),
        allow_missing_origin=True,  # so command-line clients, which send no Origin, can connect
        tokens=(StaticToken(name="demo", token=Secret(client_token), subscribe=("*",), publish=()),),
        publish_api=PublishApiConfig(tokens=(Secret(publish_token),)),
    )
    write_env_file(ENV_FILE, {"WSGATE_TOKEN": client_token, "WSGATE_PUBLISH_TOKEN": publish_token})
    logs.configure()
    server = HubServer(config)

    async def start() -> None:
        await server.start()
        base = server.url
        print(
            f"wsgate hub running at {base} (WebSocket {base.replace('http', 'ws', 1)}/ws)\n"
            f"Credentials were written to {ENV_FILE} (mode 0600). To try it, in another terminal:\n"
            f"  set -a; . {ENV_FILE}; set +a\n"
            f'  .venv/bin/wsgate publish --url {base} --channel kiosks \'{{"action": "reset"}}\'\n'
            f"Subscribe over WebSocket at /ws with the header 'Authorization: Bearer $WSGATE_TOKEN'.\n"
            "Ctrl-C stops it.",
            flush=True,
        )

    run_async(serve_until_signalled(start, server.stop))
    return 0
