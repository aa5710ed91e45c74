"""The ``wsgate`` command (DESIGN.md §2).

Exit status: 0 success, 2 bad usage or configuration, 1 runtime failure. Secrets come from environment
variables or files named in the configuration, never from arguments (they would show in ``ps``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wsgate import __version__
from wsgate.errors import ConfigError, WsgateError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(WsgateError):
    """Bad command-line usage (exit status 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.run
    try:
        return command(args)
    except (ConfigError, UsageError) as exc:
        print(f"wsgate {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WsgateError as exc:
        print(f"wsgate {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        # Typically "address already in use" or a file that cannot be read; the text names what failed.
        print(f"wsgate {args.command}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsgate",
        description="WebSocket authentication made safe for browsers: an Origin-checking gateway that "
        "injects credentials, and an authenticated publish/subscribe hub.",
        epilog="Secrets are read from environment variables or files, never from arguments.",
    )
    parser.add_argument("--version", action="version", version=f"wsgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run the whole kiosk system on this machine with embedded defaults")
    up.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    up.set_defaults(run=run_up)

    hub = commands.add_parser("hub", help="run a hub node (publish/subscribe WebSocket server)")
    hub.add_argument("--config", type=Path, help="TOML configuration file (default: $WSGATE_CONFIG)")
    hub.add_argument("--listen", metavar="H:P", help="override hub.listen")
    hub.set_defaults(run=run_hub)

    gateway = commands.add_parser("gateway", help="run a gateway (static files, /api proxy, WebSocket proxy)")
    gateway.add_argument("--config", type=Path, help="TOML configuration file (default: $WSGATE_CONFIG)")
    gateway.add_argument("--listen", metavar="H:P", help="override gateway.listen")
    gateway.set_defaults(run=run_gateway)

    publish = commands.add_parser(
        "publish", help="publish a message through a hub's HTTP API (credential: $WSGATE_PUBLISH_TOKEN)"
    )
    publish.add_argument("--url", required=True, help="the hub's HTTP base URL, e.g. http://127.0.0.1:9000")
    publish.add_argument("--channel", required=True)
    publish.add_argument("data", nargs="?", metavar="DATA_JSON", help="JSON payload (default: read stdin)")
    publish.set_defaults(run=run_publish)

    listen = commands.add_parser(
        "listen", help="subscribe and print messages as JSON lines (credential: $WSGATE_TOKEN)"
    )
    listen.add_argument("--url", required=True, help="WebSocket URL, e.g. ws://127.0.0.1:9000/ws")
    listen.add_argument("--channel", required=True)
    listen.add_argument("--origin", help="Origin header to send")
    listen.set_defaults(run=run_listen)

    token = commands.add_parser("token", help="mint a signed token (key: $WSGATE_SIGNING_KEY)")
    token.add_argument("--sub", required=True, help="subject (who the token is for)")
    token.add_argument("--channel", required=True, action="append", help="channel or pattern; repeatable")
    token.add_argument("--publish", action="store_true", help="also grant publishing on the channels")
    token.add_argument("--ttl", default="5m", help="lifetime, e.g. 60s, 5m, 12h (default: 5m)")
    token.add_argument(
        "--kid", default="default", help="key id, as named in hub.signing.keys (default: default)"
    )
    token.add_argument("--audience", help="aud claim, when the hub sets hub.signing.audience")
    token.add_argument(
        "--handshake-only",
        action="store_true",
        help="the token only opens a connection before it expires; the connection outlives it",
    )
    token.set_defaults(run=run_token)

    probe = commands.add_parser("probe", help="audit a WebSocket endpoint for cross-site hijacking holes")
    probe.add_argument("url", metavar="WS_URL")
    probe.add_argument("--origin", required=True, help="the legitimate Origin")
    probe.add_argument("--header", metavar="NAME:@ENVVAR", help="send the value of ENVVAR in header NAME")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.add_argument("--ca", type=Path, metavar="FILE", help="CA certificates (PEM) for a wss:// endpoint")
    probe.set_defaults(run=run_probe)

    check = commands.add_parser("check", help="validate a configuration and print what it would do")
    check.add_argument("--config", type=Path, required=True)
    check.set_defaults(run=run_check)
    return parser


def not_yet(what: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(f"wsgate {args.command}: {what} is not available in wsgate {__version__} yet", file=sys.stderr)
        return EXIT_FAILURE

    return run


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed: it makes the byte-moving paths markedly cheaper."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def serve_until_signalled(
    start: Callable[[], Coroutine[Any, Any, None]],
    stop: Callable[[], Coroutine[Any, Any, None]],
    *,
    reload: Callable[[], None] | None = None,
) -> None:
    """Start, then wait for SIGINT or SIGTERM and stop gracefully; SIGHUP calls ``reload``."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, reload)
    await start()
    try:
        await stopping.wait()
    finally:
        await stop()


def _config_path(args: argparse.Namespace) -> Path:
    path = args.config or os.environ.get("WSGATE_CONFIG")
    if not path:
        raise UsageError("--config FILE is required (or set WSGATE_CONFIG)")
    return Path(path)


def run_hub(args: argparse.Namespace) -> int:
    from wsgate import logs
    from wsgate.config import load_config, parse_listen
    from wsgate.hub.server import HubServer

    config = load_config(_config_path(args))
    if config.hub is None:
        raise ConfigError("hub", "the configuration has no [hub] section", "add a [hub] table")
    hub_config = config.hub
    if args.listen:
        hub_config = replace(hub_config, listen=parse_listen(args.listen, "--listen"))
    logs.configure()
    server = HubServer(hub_config)
    run_async(serve_until_signalled(server.start, server.stop))
    return EXIT_OK


def run_gateway(args: argparse.Namespace) -> int:
    from wsgate import logs
    from wsgate.config import load_config, parse_listen
    from wsgate.gateway.server import GatewayServer

    config = load_config(_config_path(args))
    if config.gateway is None:
        raise ConfigError("gateway", "the configuration has no [gateway] section", "add a [gateway] table")
    gateway_config = config.gateway
    if args.listen:
        gateway_config = replace(gateway_config, listen=parse_listen(args.listen, "--listen"))
    logs.configure()
    server = GatewayServer(gateway_config)
    run_async(serve_until_signalled(server.start, server.stop, reload=server.reload_certificate))
    return EXIT_OK


def run_up(args: argparse.Namespace) -> int:
    from wsgate.demo.up import run

    if args.host in ("0.0.0.0", "::", ""):  # noqa: S104 - refusing it, not binding it
        # The kiosk pages' Origin names the address they were loaded from, and only that is allowed.
        raise UsageError(
            f"--host {args.host!r}: give the address kiosks use to reach this machine "
            "(e.g. --host 192.168.1.20), not a wildcard; it becomes the one allowed Origin"
        )
    return run(host=args.host, port=args.port)


def run_check(args: argparse.Namespace) -> int:
    from wsgate.config import load_config, render_config

    config = load_config(args.config)
    if config.hub is not None:
        print(f"# hub: would listen on {config.hub.listen} (WebSocket at /ws, HTTP API at /api)")
        if config.hub.echo:
            print("# hub: WARNING: echo = true opens /echo without a credential (conformance testing only)")
    if config.gateway is not None:
        print(
            f"# gateway: would listen on {config.gateway.listen} with {len(config.gateway.routes)} route(s)"
        )
    print(render_config(config), end="")
    return EXIT_OK


def _env_secret(name: str, purpose: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise UsageError(f"environment variable {name} is not set ({purpose})")
    return value


def run_token(args: argparse.Namespace) -> int:
    from wsgate.auth.tokens import mint_token
    from wsgate.secret import Secret
    from wsgate.units import parse_duration

    key = Secret(_env_secret("WSGATE_SIGNING_KEY", "the HS256 signing key"))
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise UsageError(f"--ttl: {exc}") from None
    channels = tuple(args.channel)
    try:
        token = mint_token(
            key=key,
            kid=args.kid,
            subject=args.sub,
            ttl=ttl,
            subscribe=channels,
            publish=channels if args.publish else (),
            audience=args.audience,
            handshake_only=args.handshake_only,
        )
    except ValueError as exc:  # the messages name the problem, never the key
        raise UsageError(str(exc)) from None
    print(token)
    return EXIT_OK


def run_probe(args: argparse.Namespace) -> int:
    import shutil

    from wsgate import probe

    credential = None
    try:
        if args.header is not None:
            name, env_var = probe.parse_header_spec(args.header)
            value = os.environ.get(env_var)
            if value is None:
                raise UsageError(f"environment variable {env_var} is not set (credential for header {name})")
            credential = probe.Credential.create(name, env_var, value)
        target = probe.parse_target(args.url, args.origin, credential, ca=args.ca)
    except ValueError as exc:  # the messages name the problem, never the credential
        raise UsageError(str(exc)) from None
    report = probe.run(target)  # ProbeError (exit 1) when the endpoint cannot be audited at all
    if args.json:
        print(report.to_json())
    else:
        print(report.render(width=min(max(shutil.get_terminal_size((120, 24)).columns, 100), 160)), end="")
    return report.exit_status


# `wsgate publish` waits this long for the hub's answer before it retries.
PUBLISH_TIMEOUT = 30.0
# The pause before that one retry: a hub restarting or a link flapping gets a moment.
PUBLISH_RETRY_DELAY = 1.0
# Failures that leave it unknown whether the message was published: no answer at all, or a proxy in front of
# the hub that lost it. Retrying them is safe because the retry carries the same Idempotency-Key.
_UNANSWERED = frozenset({None, 502, 504})


def run_publish(args: argparse.Namespace) -> int:
    import time
    import uuid

    from wsgate.client import PublishFailed, publish

    token = _env_secret("WSGATE_PUBLISH_TOKEN", "the hub's publish credential")
    raw = args.data if args.data is not None else sys.stdin.read()
    try:
        data = json.loads(raw)
    except ValueError:
        raise UsageError("DATA_JSON is not valid JSON") from None
    key = str(uuid.uuid4())  # one per message: the hub applies it once however often it is sent

    def attempt() -> int:
        return publish(
            args.url, args.channel, data, token=token, timeout=PUBLISH_TIMEOUT, idempotency_key=key
        )

    try:
        try:
            offset = attempt()
        except PublishFailed as exc:
            if exc.status not in _UNANSWERED:
                raise
            print(f"wsgate publish: {exc}; retrying once with the same Idempotency-Key", file=sys.stderr)
            time.sleep(PUBLISH_RETRY_DELAY)
            offset = attempt()
    except ValueError:  # NaN or Infinity: Python's json reads them, JSON has no such values
        raise UsageError("DATA_JSON is not valid JSON") from None
    print(offset)
    return EXIT_OK


def run_listen(args: argparse.Namespace) -> int:
    from wsgate.client import run_listen as listen

    token = _env_secret("WSGATE_TOKEN", "the hub credential, sent in a header")
    header = os.environ.get("WSGATE_AUTH_HEADER") or "authorization"
    return listen(args.url, args.channel, origin=args.origin, token=token, header=header)
