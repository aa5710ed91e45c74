"""Typed configuration: one TOML file → frozen dataclasses for a hub, a gateway, or both.

Entry points:

- :func:`load_config` reads a file; :func:`parse_config` takes an already-parsed mapping.
- :func:`render_config` prints the effective configuration (every default filled in, secrets as ``***``) as
  TOML that :func:`load_config` reads back once the secrets are put back.
- :func:`parse_listen` parses ``host:port`` / ``[v6]:port``; the CLI uses it for ``--listen``.

Every string value may use substitution, applied after TOML parsing (so it can never change the file's
structure) and in a single pass (a substituted value is never substituted again):

- ``${NAME}`` → the environment variable NAME; unset → :class:`~wsgate.errors.ConfigError`.
- ``${file:PATH}`` → the content of PATH (relative to the configuration file), surrounding whitespace removed.
- ``$$`` → a literal ``$``. A ``$`` followed by anything else is kept as it is.

Every problem raises :class:`~wsgate.errors.ConfigError` whose ``key`` is the dotted path of the offending
value (``hub.limits.max_message``, ``gateway.routes[1].upstream``); the first problem found is raised. Error
messages never contain the value of a secret field (tokens, keys, injected header values).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeVar
from urllib.parse import SplitResult, urlsplit

from wsgate.errors import ConfigError
from wsgate.http_head import TOKEN_TEXT
from wsgate.secret import MASK, Secret
from wsgate.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "Address",
    "Config",
    "GatewayConfig",
    "GatewayLimits",
    "HistoryConfig",
    "HubConfig",
    "HubLimits",
    "MintConfig",
    "PublishApiConfig",
    "Route",
    "ServerTls",
    "SigningConfig",
    "StaticToken",
    "UpstreamTls",
    "load_config",
    "parse_config",
    "parse_listen",
    "render_config",
]

_T = TypeVar("_T")

# ----------------------------------------------------------------------------------------------------------
# The configuration objects. Field names and defaults are a public contract (DESIGN.md §3).


@dataclass(frozen=True, slots=True)
class Address:
    """A listening address; ``str()`` gives ``127.0.0.1:9000`` or ``[::1]:9000``."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    """Per-channel history kept so that a reconnecting client misses nothing. ``size = 0`` keeps none."""

    size: int = 100  # messages per channel: a kiosk that reconnects within seconds needs only a few
    ttl: float = 600.0  # seconds: longer than any reconnect backoff, short enough to bound memory


@dataclass(frozen=True, slots=True)
class HubLimits:
    """Bounds for one hub node. Sizes in bytes, times in seconds."""

    max_message: int = 65536  # decompressed; a control message for a kiosk is a few hundred bytes
    max_connections: int = 10000  # stays well below a default 64k file-descriptor limit
    send_queue: int = 1048576  # per connection; a consumer further behind than this is closed (1013)
    ping_interval: float = 20.0  # keeps NAT and proxy idle timers (often 30-60 s) from dropping the socket
    handshake_timeout: float = 10.0  # slowloris bound: request head and handshake must finish by then
    shutdown_timeout: float = 10.0  # time clients get to see the 1001 close before sockets are cut
    max_subscriptions: int = 100  # per connection; bounds the fan-out work one client can create


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A fixed credential and the channels it may subscribe and publish to."""

    name: str
    token: Secret
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()


def _no_secrets() -> Mapping[str, Secret]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SigningConfig:
    """HS256 verification keys by ``kid`` (several during rotation); optional required ``aud``."""

    # hash=False: a mapping is not hashable, and equality still compares it.
    keys: Mapping[str, Secret] = field(hash=False)
    audience: str | None = None


@dataclass(frozen=True, slots=True)
class PublishApiConfig:
    """Bearer tokens that may publish on every channel through ``POST /api/publish`` and read presence.

    Static and signed tokens with a publish right may use the HTTP API for their channels too; with no
    tokens here and no such rights, nothing can publish over HTTP."""

    tokens: tuple[Secret, ...] = ()


@dataclass(frozen=True, slots=True)
class HubConfig:
    """A hub node. ``auth_header`` is lower case; origins are kept as written (validated)."""

    listen: Address = Address("127.0.0.1", 9000)  # loopback: exposing the hub is a deliberate choice
    allowed_origins: tuple[str, ...] = ()  # none: a browser page cannot connect unless listed
    allow_missing_origin: bool = False
    auth_header: str = "authorization"
    broker: str = "memory://"  # one node needs no Redis
    history: HistoryConfig = HistoryConfig()
    limits: HubLimits = HubLimits()
    tokens: tuple[StaticToken, ...] = ()
    signing: SigningConfig | None = None
    publish_api: PublishApiConfig = PublishApiConfig()
    # GET /echo for the Autobahn conformance suite (scripts/conformance); never in production.
    echo: bool = False


@dataclass(frozen=True, slots=True)
class ServerTls:
    """Certificate chain and private key files for TLS termination at the gateway."""

    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How the gateway verifies a ``wss://`` / ``https://`` upstream; ``ca`` replaces the system roots."""

    ca: Path | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True)
class MintConfig:
    """A per-connection signed token (JWT HS256) the gateway puts in ``header`` for the upstream.

    ``subject`` is a literal ``sub`` claim or ``query:NAME``: the value of the client's query parameter NAME.
    In ``subscribe`` and ``publish``, ``{subject}`` stands for that subject, so ``"kiosk:{subject}"`` grants
    each connection its own channel and no other's.
    """

    key: Secret
    ttl: float = 60.0  # seconds: only needs to outlive the upstream handshake
    subject: str = "gateway"
    subscribe: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    kid: str | None = None
    audience: str | None = None
    header: str = "authorization"


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    """Bounds for the gateway. Sizes in bytes, times in seconds; ``None`` means no limit."""

    max_connections: int = 10000  # stays well below a default 64k file-descriptor limit
    handshake_timeout: float = 10.0  # slowloris bound: the request head must arrive by then
    max_header: int = 16384  # request head; browsers stay far below, h11 uses the same bound (431 above)
    upstream_timeout: float = 10.0  # connect + upstream handshake; 504 after it
    idle_timeout: float | None = None
    max_lifetime: float | None = None
    shutdown_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Route:
    """A path prefix and where it goes. Header names are lower case; their values are secrets.

    ``forwarded`` is ``"x-forwarded"``, ``"rfc7239"`` or ``"none"``.
    """

    path: str
    upstream: tuple[str, ...]
    websocket: bool = False
    change_origin: bool = False
    headers: Mapping[str, Secret] = field(default_factory=_no_secrets, hash=False)
    mint: MintConfig | None = None
    tls: UpstreamTls = UpstreamTls()
    allow_missing_origin: bool = False
    pass_cookies: bool = False
    pass_authorization: bool = False
    rewrite: str | None = None
    forwarded: str = "x-forwarded"


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """A gateway. ``routes`` are ordered longest path first, so the first prefix that matches is the best."""

    listen: Address = Address("127.0.0.1", 8000)
    tls: ServerTls | None = None
    public_origins: tuple[str, ...] = ()  # none: no browser page may open a WebSocket until listed
    static: Path | None = None
    spa: bool = False
    routes: tuple[Route, ...] = ()
    limits: GatewayLimits = GatewayLimits()
    # /metrics and /healthz on a separate (normally loopback) address, never on the public listener.
    admin_listen: Address | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """A whole file; at least one of ``hub`` and ``gateway`` is set after parsing."""

    hub: HubConfig | None = None
    gateway: GatewayConfig | None = None


# ----------------------------------------------------------------------------------------------------------
# Entry points.


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at ``path``.

    ``env`` (default :data:`os.environ`) supplies ``${NAME}``; relative paths in the file are relative to the
    file's directory. Raises :class:`ConfigError`; an unreadable file or a TOML syntax error names the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(
            str(path),
            f"cannot read the configuration file: {err.strerror or type(err).__name__}",
            "check the path",
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), "the configuration file is not UTF-8 text", "save it as UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), f"not valid TOML: {err}", "correct the syntax at that line") from None
    return parse_config(data, env, base_dir=path.absolute().parent)


def parse_config(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, base_dir: Path | None = None
) -> Config:
    """Validate an already-parsed TOML document.

    ``env`` (default :data:`os.environ`) supplies ``${NAME}``; relative paths, including ``${file:PATH}``, are
    resolved against ``base_dir`` (default: the current directory). Raises :class:`ConfigError`.
    """
    ctx = _Context(os.environ if env is None else env, (base_dir or Path.cwd()).absolute())
    top = _Table(data, "", ctx, ("hub", "gateway"))
    hub = top.table("hub", _HUB_KEYS)
    gateway = top.table("gateway", _GATEWAY_KEYS)
    if hub is None and gateway is None:
        problem = "nothing to run: the configuration has neither [hub] nor [gateway]"
        raise ConfigError("", problem, "add a [hub] or a [gateway] table")
    return Config(
        hub=None if hub is None else _parse_hub(hub),
        gateway=None if gateway is None else _parse_gateway(gateway),
    )


def parse_listen(text: str, key: str) -> Address:
    """Parse ``host:port`` or ``[ipv6]:port`` (port 0 lets the system choose); ``key`` names it in errors."""
    fix = 'write host:port, e.g. "127.0.0.1:9000", "0.0.0.0:9000" or "[::1]:9000"'
    match = _LISTEN.fullmatch(text)
    if match is None:
        if text.count(":") > 1 and not text.startswith("["):
            raise ConfigError(key, f"{text!r}: an IPv6 address needs brackets", 'write e.g. "[::1]:9000"')
        raise ConfigError(key, f"{text!r} is not a listen address", fix)
    port = int(match["port"])
    if port > 65535:
        raise ConfigError(key, f"port {port} is out of range", "use a port from 0 to 65535")
    if match["v6"] is not None:
        try:
            ipaddress.IPv6Address(match["v6"])
        except ValueError:
            raise ConfigError(key, f"{match['v6']!r} is not an IPv6 address", fix) from None
        return Address(match["v6"], port)
    host = match["host"]
    if not _is_ipv4_or_hostname(host):
        raise ConfigError(key, f"{host!r} is neither an IPv4 address nor a host name", fix)
    return Address(host, port)


def render_config(config: Config) -> str:
    """The effective configuration as TOML, every default filled in and every secret shown as ``***``.

    With the real secrets put back where ``***`` stands, :func:`load_config` reads it to an equal ``Config``.
    A password in the broker URL is masked too, so that one value does not read back.
    """
    lines = [] if config.hub is None else _render_hub(config.hub)
    if config.gateway is not None:
        lines += _render_gateway(config.gateway)
    return "\n".join(lines).lstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------------------
# Reading values: substitution, types, unknown keys. Every error names the dotted key.

_SUBSTITUTION = re.compile(r"\$\$|\$\{(?P<body>[^}]*)(?P<close>\}?)")
_SUBSTITUTION_FIX = "write ${NAME} for an environment variable, ${file:PATH} for a file, $$ for a literal $"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A secret file holds one value; the bound stops ${file:/dev/zero} from eating memory.
_MAX_FILE_BYTES = 1 << 20
# Header values may not hold CTLs except HTAB (RFC 7230 §3.2); a CR or LF would start a new header.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class _Context:
    env: Mapping[str, str]
    base_dir: Path

    def path(self, text: str) -> Path:
        path = Path(text)
        return path if path.is_absolute() else self.base_dir / path

    def expand(self, text: str, key: str) -> str:
        """Apply ``$$``, ``${NAME}`` and ``${file:PATH}`` in one pass; results are not expanded again."""

        def substitute(match: re.Match[str]) -> str:
            if match[0] == "$$":
                return "$"
            where = f"at character {match.start() + 1}"
            if not match["close"]:
                raise ConfigError(key, f"unterminated '${{' {where}", _SUBSTITUTION_FIX)
            body = match["body"]
            if body.startswith("file:"):
                return self._read_file(body.removeprefix("file:"), key)
            if not _ENV_NAME.fullmatch(body):
                raise ConfigError(key, f"invalid substitution {where}", _SUBSTITUTION_FIX)
            if body not in self.env:
                fix = f"export {body}=… or use ${{file:PATH}}"
                raise ConfigError(key, f"environment variable {body} is not set", fix)
            return self.env[body]

        return _SUBSTITUTION.sub(substitute, text)

    def _read_file(self, name: str, key: str) -> str:
        if not name:
            raise ConfigError(key, "${file:} names no file", "write ${file:PATH}")
        path = self.path(name)
        try:
            with path.open("rb") as stream:
                data = stream.read(_MAX_FILE_BYTES + 1)
        except OSError as err:
            problem = f"cannot read file {path}: {err.strerror or type(err).__name__}"
            raise ConfigError(
                key, problem, "check the path in ${file:…} and that wsgate may read it"
            ) from None
        if len(data) > _MAX_FILE_BYTES:
            raise ConfigError(
                key, f"file {path} is larger than 1MiB", "point ${file:…} at a file holding one value"
            )
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(
                key, f"file {path} is not UTF-8 text", "store the value as UTF-8 text"
            ) from None


def _join(path: str, name: str) -> str:
    """The dotted key of ``name`` under ``path``, quoted the TOML way when it is not a bare key."""
    part = name if _BARE_KEY.fullmatch(name) else _toml_string(name, escape_dollar=False)
    return f"{path}.{part}" if path else part


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return "a date or time"


def _wrong_type(key: str, expected: str, value: object, fix: str | None = None) -> ConfigError:
    # The value itself is never shown: it may be a secret put under the wrong key.
    return ConfigError(key, f"expected {expected}, got {_type_name(value)}", fix or f"write {expected} here")


def _unknown_key(key: str, name: str, allowed: Collection[str]) -> ConfigError:
    close = difflib.get_close_matches(name, list(allowed), n=1)
    fix = f"did you mean {close[0]!r}?" if close else "known keys here: " + ", ".join(sorted(allowed))
    return ConfigError(key, "unknown key", fix)


def _check_minimum(value: float, minimum: float, key: str, spell: Callable[[Any], str] = str) -> None:
    if value < minimum:
        raise ConfigError(key, f"must be at least {spell(minimum)}", f"set it to {spell(minimum)} or more")


class _Table:
    """One TOML table at a dotted path: rejects unknown keys, then hands out typed, substituted values."""

    __slots__ = ("ctx", "data", "path")

    def __init__(self, data: object, path: str, ctx: _Context, allowed: Collection[str]) -> None:
        if not isinstance(data, Mapping):
            raise _wrong_type(path, "a table", data, "write a table: { key = value, … } or a [section]")
        for name in data:
            if name not in allowed:
                raise _unknown_key(_join(path, name), name, allowed)
        self.data: Mapping[str, object] = data
        self.path = path
        self.ctx = ctx

    def key(self, name: str) -> str:
        return _join(self.path, name)

    def get(self, name: str) -> object:
        return self.data.get(name, _MISSING)

    def required(self, name: str) -> object:
        value = self.get(name)
        if value is _MISSING:
            raise ConfigError(self.key(name), "is required", f"add {name} = …")
        return value

    def convert(self, name: str, default: _T, convert: Callable[[object, str, _Context], _T]) -> _T:
        """``convert(value, key, ctx)`` when the key is present, else ``default``."""
        value = self.get(name)
        return default if value is _MISSING else convert(value, self.key(name), self.ctx)

    def table(self, name: str, allowed: Collection[str]) -> _Table | None:
        value = self.get(name)
        return None if value is _MISSING else _Table(value, self.key(name), self.ctx, allowed)

    def section(self, name: str, allowed: Collection[str]) -> _Table:
        """A sub-table whose keys all have defaults: absent reads as empty."""
        return self.table(name, allowed) or _Table({}, self.key(name), self.ctx, allowed)

    def tables(self, name: str, allowed: Collection[str]) -> list[_Table]:
        """An array of tables (``[[name]]``); absent → empty."""
        return [_Table(item, key, self.ctx, allowed) for item, key in self.array(name)]

    def array(self, name: str) -> list[tuple[object, str]]:
        """The items of an array with their keys (``name[0]``, …); absent → empty."""
        value = self.get(name)
        if value is _MISSING:
            return []
        if not isinstance(value, list):
            raise _wrong_type(self.key(name), "an array", value, f"write {name} = [ … ]")
        return [(item, f"{self.key(name)}[{index}]") for index, item in enumerate(value)]

    def entries(self, name: str) -> list[tuple[str, object, str]]:
        """The entries of a free-form table (name → value) with their keys; absent → empty."""
        value = self.get(name)
        if value is _MISSING:
            return []
        if not isinstance(value, Mapping):
            raise _wrong_type(self.key(name), "a table", value, f"write {name} = {{ … }}")
        return [(entry, item, _join(self.key(name), entry)) for entry, item in value.items()]

    def optional_string(self, name: str) -> str | None:
        return self.convert(name, None, _as_text)

    def strings(self, name: str) -> tuple[str, ...]:
        return tuple(_as_text(item, key, self.ctx) for item, key in self.array(name))

    def channel_patterns(self, name: str) -> tuple[str, ...]:
        return tuple(_channel_pattern(item, key, self.ctx) for item, key in self.array(name))

    def minted_channel_patterns(self, name: str) -> tuple[str, ...]:
        return tuple(_minted_channel_pattern(item, key, self.ctx) for item, key in self.array(name))

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise _wrong_type(self.key(name), "true or false", value)
        return value

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        value = self.get(name)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(self.key(name), "an integer", value)
        _check_minimum(value, minimum, self.key(name))
        return value

    def size(self, name: str, default: int, *, minimum: int = 1) -> int:
        """Bytes: an integer or a string such as ``"64KiB"``."""
        value = self.get(name)
        if value is _MISSING:
            return default
        key, fix = self.key(name), 'write e.g. "64KiB", "1MB" or a number of bytes'
        if isinstance(value, str):
            value = self.ctx.expand(value, key)
        elif isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(key, "a size", value, fix)
        try:
            size = parse_size(value)
        except ValueError as err:
            raise ConfigError(key, str(err), fix) from None
        _check_minimum(size, minimum, key, format_size)
        return size

    def duration(self, name: str, default: float, *, minimum: float = 0.001) -> float:
        value = self.optional_duration(name, minimum=minimum)
        return default if value is None else value

    def optional_duration(self, name: str, *, minimum: float = 0.001) -> float | None:
        """Seconds: a string such as ``"30s"``, or a bare TOML number of seconds; absent → ``None``."""
        value = self.get(name)
        if value is _MISSING:
            return None
        key, fix = self.key(name), 'write e.g. "30s", "5m" or "250ms"'
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _wrong_type(key, "a duration", value, fix)
        # A TOML number goes through the same checks as text (inf, nan, negative); 'f' avoids "1e-05".
        text = self.ctx.expand(value, key) if isinstance(value, str) else f"{Decimal(repr(value)):f}"
        try:
            seconds = parse_duration(text)
        except ValueError as err:
            raise ConfigError(key, str(err), fix) from None
        _check_minimum(seconds, minimum, key, format_duration)
        return seconds

    def required_value(self, name: str, convert: Callable[[object, str, _Context], _T]) -> _T:
        """``convert(value, key, ctx)``; an absent key is an error."""
        return convert(self.required(name), self.key(name), self.ctx)


def _as_string(value: object, key: str, ctx: _Context) -> str:
    """Any string, substituted."""
    if not isinstance(value, str):
        raise _wrong_type(key, "a string", value)
    return ctx.expand(value, key)


def _as_text(value: object, key: str, ctx: _Context) -> str:
    """A non-empty string without control characters: names, channels, paths."""
    text = _as_string(value, key, ctx)
    if not text:
        raise ConfigError(key, "is empty", "write a value, or remove the key")
    if _CONTROL.search(text):
        raise ConfigError(key, "contains a control character", "remove it")
    return text


# Secret fields: their values never appear in an error, whether written in the file or substituted.


def _as_secret(value: object, key: str, ctx: _Context) -> Secret:
    text = _as_string(value, key, ctx)
    if not text:
        raise ConfigError(key, "is empty", "set the secret, e.g. from ${NAME} or ${file:PATH}")
    return Secret(text)


# Channel rights: a channel name (hub/protocol.py's alphabet), optionally ending in "*" for a prefix.
_CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9_.:@/-]{0,200}\*?")
# RFC 6750 §2.1 b64token: what may follow "Bearer " in an Authorization header.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


# In a minted token's rights, "{subject}" stands for the connection's subject ("kiosk:{subject}").
SUBJECT_PLACEHOLDER = "{subject}"


def _minted_channel_pattern(value: object, key: str, ctx: _Context) -> str:
    text = _as_text(value, key, ctx)
    _channel_pattern(text.replace(SUBJECT_PLACEHOLDER, "s"), key, ctx)
    return text


def _channel_pattern(value: object, key: str, ctx: _Context) -> str:
    text = _as_text(value, key, ctx)
    if not _CHANNEL_PATTERN.fullmatch(text):
        problem = f"{text[:60]!r} is not a channel name or prefix pattern"
        fix = 'use 1-200 characters of A-Z a-z 0-9 _ . : @ / -, optionally ending in "*", like "kiosk:*"'
        raise ConfigError(key, problem, fix)
    return text


def _bearer_secret(value: object, key: str, ctx: _Context) -> Secret:
    """A credential presented as ``Authorization: Bearer <token>``: it must be a b64token to be sendable."""
    secret = _header_secret(value, key, ctx)
    if not _BEARER_TOKEN.fullmatch(secret.reveal()):
        problem = (
            "cannot be sent as 'Authorization: Bearer <token>' (RFC 6750 allows A-Z a-z 0-9 - . _ ~ + / =)"
        )
        fix = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        raise ConfigError(key, problem, fix)
    return secret


def _header_secret(value: object, key: str, ctx: _Context) -> Secret:
    """A credential sent in an HTTP header: a static token, a publish token, an injected header value."""
    secret = _as_secret(value, key, ctx)
    if _CONTROL.search(secret.reveal()):
        problem = "contains a control character (CR, LF, NUL …), which cannot be sent in an HTTP header"
        raise ConfigError(key, problem, "remove it from the variable or file the value comes from")
    if secret.reveal() != secret.reveal().strip():
        problem = "starts or ends with whitespace, which HTTP strips from header values"
        raise ConfigError(key, problem, "remove the whitespace, or use ${file:PATH}, which trims it")
    return secret


def _signing_key(value: object, key: str, ctx: _Context) -> Secret:
    """An HS256 key: any characters, at least 32 bytes."""
    secret = _as_secret(value, key, ctx)
    if len(secret.reveal().encode()) < _HS256_MIN_KEY_BYTES:
        # RFC 7518 §3.2: an HS256 key must be at least as long as the hash output, 256 bits.
        problem = f"is shorter than {_HS256_MIN_KEY_BYTES} bytes, too weak for HS256 (RFC 7518 §3.2)"
        fix = "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        raise ConfigError(key, problem, fix)
    return secret


# ----------------------------------------------------------------------------------------------------------
# Validators for particular kinds of value: (value, key, ctx) → converted value.

_LISTEN = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>[0-9]{1,5})")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# Headers that frame the connection or that the gateway sets itself; injecting them would break the upgrade
# or, for Origin, defeat the upstream's own Origin check.
_RESERVED_HEADERS = frozenset(
    {"host", "origin", "connection", "upgrade", "content-length", "transfer-encoding", "te", "trailer"}
    | {"keep-alive", "proxy-connection"}
)
_QUERY_NAME = re.compile(r"[A-Za-z0-9._~-]+")  # RFC 3986 §2.3 unreserved: needs no percent-encoding
_URL_PATH = re.compile(r"/[^\s\x00-\x1f\x7f?#]*")
_FORWARDED_STYLES = ("x-forwarded", "rfc7239", "none")
_HS256_MIN_KEY_BYTES = 32


def _is_ipv4_or_hostname(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        # A name whose last label is all digits would be taken for an IPv4 address (RFC 1123 §2.1).
        return len(host) <= 253 and all(map(_HOST_LABEL.fullmatch, labels)) and not labels[-1].isdigit()
    return True


def _listen(value: object, key: str, ctx: _Context) -> Address:
    return parse_listen(_as_string(value, key, ctx), key)


def _header_name(name: str, key: str) -> str:
    """A header name in lower case (HTTP field names are case-insensitive)."""
    if not TOKEN_TEXT.fullmatch(name):  # RFC 9110 §5.6.2: field-name = token
        raise ConfigError(
            key, f"{name!r} is not a valid HTTP header name (RFC 7230 §3.2.6)", 'use e.g. "token"'
        )
    return name.lower()


def _injectable_header(name: str, key: str) -> str:
    lowered = _header_name(name, key)
    if lowered in _RESERVED_HEADERS or lowered.startswith("sec-websocket-"):
        raise ConfigError(key, f"the gateway cannot inject {lowered!r}", "choose another header name")
    return lowered


def _auth_header(value: object, key: str, ctx: _Context) -> str:
    return _header_name(_as_string(value, key, ctx), key)


def _mint_header(value: object, key: str, ctx: _Context) -> str:
    return _injectable_header(_as_string(value, key, ctx), key)


def _origin(value: object, key: str, ctx: _Context) -> str:
    # Imported here so that loading the configuration module does not pull in the auth package.
    from wsgate.auth.origins import OriginPattern

    text = _as_string(value, key, ctx)
    try:
        OriginPattern.parse(text)
    except ValueError as err:
        raise ConfigError(
            key, str(err), 'write e.g. "https://kiosk.example.org" or "https://*.example.org"'
        ) from None
    return text


def _url(
    value: object, key: str, ctx: _Context, schemes: tuple[str, ...], fix: str
) -> tuple[str, SplitResult]:
    """A URL with one of ``schemes`` and a valid port. Errors never repeat the URL: it may hold a password."""
    text = _as_string(value, key, ctx)
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        raise ConfigError(key, "contains whitespace or a control character", fix)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - reading the property validates the port
    except ValueError:
        raise ConfigError(key, "is not a valid URL", fix) from None
    if parts.scheme not in schemes:
        found = f"the scheme {parts.scheme + '://'!r}" if parts.scheme else "no scheme"
        raise ConfigError(key, f"has {found}; allowed here: {', '.join(s + '://' for s in schemes)}", fix)
    return text, parts


def _upstream(value: object, key: str, ctx: _Context, websocket: bool) -> str:
    if websocket:
        schemes, fix = ("ws", "wss"), "write ws://HOST:PORT/PATH or wss://… for a WebSocket route"
    else:
        schemes, fix = ("http", "https"), "write http(s)://HOST:PORT, or set websocket = true for ws(s)://"
    text, parts = _url(value, key, ctx, schemes, fix)
    if not parts.hostname:
        raise ConfigError(key, "has no host", fix)
    if parts.username is not None or parts.password is not None:
        # The URL is not a Secret: it is logged and rendered. Credentials go in headers, which are.
        raise ConfigError(
            key, "must not carry credentials", "remove user:password@ and inject them with headers"
        )
    if parts.fragment or text.endswith("#"):
        raise ConfigError(key, "must not have a #fragment", "remove it")
    return text


def _broker(value: object, key: str, ctx: _Context) -> str:
    fix = 'write "memory://" for one node, or "redis://HOST:6379/0" ("rediss://" for TLS)'
    text, parts = _url(value, key, ctx, ("memory", "redis", "rediss"), fix)
    if parts.scheme != "memory":
        if not parts.hostname:
            raise ConfigError(key, "has no host", fix)
        if parts.path not in ("", "/") and not parts.path[1:].isdigit():
            raise ConfigError(key, "has a path that is not a database number like /0", fix)
    return text


def _url_path(value: object, key: str, ctx: _Context) -> str:
    text = _as_string(value, key, ctx)
    if not _URL_PATH.fullmatch(text):
        problem = "must be a URL path starting with '/', without spaces, control characters, '?' or '#'"
        raise ConfigError(key, problem, 'write e.g. "/api"')
    return text


def _existing_file(value: object, key: str, ctx: _Context) -> Path:
    path = ctx.path(_as_text(value, key, ctx))
    if not path.is_file():
        raise ConfigError(
            key, f"{path} is not an existing file", "relative paths start at the configuration file"
        )
    return path


def _existing_directory(value: object, key: str, ctx: _Context) -> Path:
    path = ctx.path(_as_text(value, key, ctx))
    if not path.is_dir():
        problem = f"{path} is not an existing directory"
        raise ConfigError(key, problem, "relative paths start at the configuration file")
    return path


def _forwarded(value: object, key: str, ctx: _Context) -> str:
    text = _as_string(value, key, ctx)
    if text not in _FORWARDED_STYLES:
        raise ConfigError(
            key, f"{text!r} is not a forwarding style", f"use one of {', '.join(_FORWARDED_STYLES)}"
        )
    return text


def _subject(value: object, key: str, ctx: _Context) -> str:
    text = _as_text(value, key, ctx)
    if text.startswith("query:") and not _QUERY_NAME.fullmatch(text.removeprefix("query:")):
        problem = "query:NAME needs a parameter name made of letters, digits, '.', '_', '~' or '-'"
        raise ConfigError(key, problem, 'write e.g. "query:kiosk", or a literal subject')
    return text


# ----------------------------------------------------------------------------------------------------------
# [hub]

_HUB_KEYS = (
    "listen",
    "allowed_origins",
    "allow_missing_origin",
    "auth_header",
    "broker",
    "history",
    "limits",
    "tokens",
    "signing",
    "publish_api",
    "echo",
)
_HUB_LIMIT_KEYS = (
    "max_message",
    "max_connections",
    "send_queue",
    "ping_interval",
    "handshake_timeout",
    "shutdown_timeout",
    "max_subscriptions",
)


def _parse_hub(table: _Table) -> HubConfig:
    default = HubConfig()
    return HubConfig(
        listen=table.convert("listen", default.listen, _listen),
        allowed_origins=tuple(_origin(item, key, table.ctx) for item, key in table.array("allowed_origins")),
        allow_missing_origin=table.boolean("allow_missing_origin", default.allow_missing_origin),
        auth_header=table.convert("auth_header", default.auth_header, _auth_header),
        broker=table.convert("broker", default.broker, _broker),
        history=_parse_history(table.section("history", ("size", "ttl"))),
        limits=_parse_hub_limits(table.section("limits", _HUB_LIMIT_KEYS)),
        tokens=_parse_static_tokens(
            table.tables("tokens", ("name", "token", "subscribe", "publish")),
            bearer=table.convert("auth_header", default.auth_header, _auth_header) == "authorization",
        ),
        signing=_parse_signing(table.table("signing", ("keys", "audience"))),
        publish_api=_parse_publish_api(table.section("publish_api", ("tokens",))),
        echo=table.boolean("echo", default.echo),
    )


def _parse_history(table: _Table) -> HistoryConfig:
    default = HistoryConfig()
    return HistoryConfig(
        size=table.integer("size", default.size, minimum=0),
        ttl=table.duration("ttl", default.ttl),
    )


def _parse_hub_limits(table: _Table) -> HubLimits:
    default = HubLimits()
    limits = HubLimits(
        max_message=table.size("max_message", default.max_message),
        max_connections=table.integer("max_connections", default.max_connections, minimum=1),
        send_queue=table.size("send_queue", default.send_queue),
        ping_interval=table.duration("ping_interval", default.ping_interval),
        handshake_timeout=table.duration("handshake_timeout", default.handshake_timeout),
        shutdown_timeout=table.duration("shutdown_timeout", default.shutdown_timeout, minimum=0),
        max_subscriptions=table.integer("max_subscriptions", default.max_subscriptions, minimum=1),
    )
    if limits.send_queue < limits.max_message:
        # A queue smaller than one message would close every client that is sent a maximal message.
        fix = f"set send_queue to at least max_message ({format_size(limits.max_message)})"
        raise ConfigError(table.key("send_queue"), "is smaller than max_message", fix)
    return limits


def _parse_static_tokens(tables: list[_Table], *, bearer: bool) -> tuple[StaticToken, ...]:
    tokens: list[StaticToken] = []
    names: dict[str, str] = {}
    values: dict[Secret, str] = {}
    for table in tables:
        name = table.required_value("name", _as_text)
        if name in names:
            problem = f"duplicate token name {name!r}, also used by {names[name]}"
            raise ConfigError(table.key("name"), problem, "give each token its own name")
        names[name] = table.key("name")
        token = table.required_value("token", _bearer_secret if bearer else _header_secret)
        if token in values:
            # Two entries with one token: which rights it grants would depend on the order of the file.
            raise ConfigError(
                table.key("token"), f"the same token as {values[token]}", "give each entry its own"
            )
        values[token] = table.key("token")
        subscribe, publish = table.channel_patterns("subscribe"), table.channel_patterns("publish")
        tokens.append(StaticToken(name, token, subscribe, publish))
    return tuple(tokens)


def _parse_signing(table: _Table | None) -> SigningConfig | None:
    if table is None:
        return None
    table.required("keys")
    keys: dict[str, Secret] = {}
    for kid, value, key in table.entries("keys"):
        if not kid:
            raise ConfigError(
                key, "a key id (kid) must not be empty", 'write e.g. keys = { "2026-11" = "…" }'
            )
        keys[kid] = _signing_key(value, key, table.ctx)
    if not keys:
        fix = 'write e.g. keys = { "2026-11" = "${WSGATE_SIGNING_KEY}" }'
        raise ConfigError(table.key("keys"), "needs at least one key", fix)
    return SigningConfig(MappingProxyType(keys), table.optional_string("audience"))


def _parse_publish_api(table: _Table) -> PublishApiConfig:
    return PublishApiConfig(
        tuple(_bearer_secret(item, key, table.ctx) for item, key in table.array("tokens"))
    )


# ----------------------------------------------------------------------------------------------------------
# [gateway]

_GATEWAY_KEYS = ("listen", "tls", "public_origins", "static", "spa", "routes", "limits", "admin_listen")
_GATEWAY_LIMIT_KEYS = (
    "max_connections",
    "handshake_timeout",
    "max_header",
    "upstream_timeout",
    "idle_timeout",
    "max_lifetime",
    "shutdown_timeout",
)
_ROUTE_KEYS = (
    "path",
    "upstream",
    "websocket",
    "change_origin",
    "headers",
    "mint",
    "tls",
    "allow_missing_origin",
    "pass_cookies",
    "pass_authorization",
    "rewrite",
    "forwarded",
)
_MINT_KEYS = ("key", "ttl", "subject", "subscribe", "publish", "kid", "audience", "header")
# Instances only read for their defaults; the placeholders stand in for required fields.
_ROUTE_DEFAULTS = Route("/", ())
_MINT_DEFAULTS = MintConfig(Secret(""))


def _parse_gateway(table: _Table) -> GatewayConfig:
    default = GatewayConfig()
    listen = table.convert("listen", default.listen, _listen)
    tls = _parse_server_tls(table.table("tls", ("cert", "key")))
    origins = tuple(_origin(item, key, table.ctx) for item, key in table.array("public_origins"))
    static = table.convert("static", default.static, _existing_directory)
    spa = table.boolean("spa", default.spa)
    admin_listen = table.convert("admin_listen", default.admin_listen, _listen)
    if spa and static is None:
        raise ConfigError(
            table.key("spa"), "needs static, the directory holding index.html", "set static = …"
        )
    return GatewayConfig(
        listen=listen,
        admin_listen=admin_listen,
        tls=tls,
        public_origins=origins,
        static=static,
        spa=spa,
        routes=_parse_routes(table.tables("routes", _ROUTE_KEYS)),
        limits=_parse_gateway_limits(table.section("limits", _GATEWAY_LIMIT_KEYS)),
    )


def _parse_server_tls(table: _Table | None) -> ServerTls | None:
    if table is None:
        return None
    cert = table.required_value("cert", _existing_file)
    return ServerTls(cert, table.required_value("key", _existing_file))


def _parse_gateway_limits(table: _Table) -> GatewayLimits:
    default = GatewayLimits()
    return GatewayLimits(
        max_connections=table.integer("max_connections", default.max_connections, minimum=1),
        handshake_timeout=table.duration("handshake_timeout", default.handshake_timeout),
        max_header=table.size("max_header", default.max_header),
        upstream_timeout=table.duration("upstream_timeout", default.upstream_timeout),
        idle_timeout=table.optional_duration("idle_timeout"),
        max_lifetime=table.optional_duration("max_lifetime"),
        shutdown_timeout=table.duration("shutdown_timeout", default.shutdown_timeout, minimum=0),
    )


def _parse_routes(tables: list[_Table]) -> tuple[Route, ...]:
    routes: list[Route] = []
    paths: dict[str, str] = {}
    for table in tables:
        route = _parse_route(table)
        if route.path in paths:
            problem = f"duplicate route path {route.path!r}, also used by {paths[route.path]}"
            raise ConfigError(table.key("path"), problem, "merge the two routes or change one path")
        paths[route.path] = table.key("path")
        routes.append(route)
    # Longest first, so that the first prefix match is the most specific; sorted() keeps file order on ties.
    return tuple(sorted(routes, key=lambda route: len(route.path), reverse=True))


def _parse_route(table: _Table) -> Route:
    default = _ROUTE_DEFAULTS
    path = table.required_value("path", _url_path)
    websocket = table.boolean("websocket", default.websocket)
    upstream = _parse_upstreams(table, websocket)
    headers = _parse_headers(table)
    return Route(
        path=path,
        upstream=upstream,
        websocket=websocket,
        change_origin=table.boolean("change_origin", default.change_origin),
        headers=headers,
        mint=_parse_mint(table.table("mint", _MINT_KEYS), headers, websocket),
        tls=_parse_upstream_tls(table.section("tls", ("ca", "verify"))),
        allow_missing_origin=table.boolean("allow_missing_origin", default.allow_missing_origin),
        pass_cookies=table.boolean("pass_cookies", default.pass_cookies),
        pass_authorization=table.boolean("pass_authorization", default.pass_authorization),
        rewrite=table.convert("rewrite", default.rewrite, _url_path),
        forwarded=table.convert("forwarded", default.forwarded, _forwarded),
    )


def _parse_upstreams(table: _Table, websocket: bool) -> tuple[str, ...]:
    value, key = table.required("upstream"), table.key("upstream")
    if isinstance(value, str):
        return (_upstream(value, key, table.ctx, websocket),)
    if not isinstance(value, list):
        raise _wrong_type(key, "a URL or an array of URLs", value)
    if not value:
        raise ConfigError(key, "is empty", "list at least one upstream URL")
    return tuple(
        _upstream(item, item_key, table.ctx, websocket) for item, item_key in table.array("upstream")
    )


def _parse_headers(table: _Table) -> Mapping[str, Secret]:
    headers: dict[str, Secret] = {}
    for name, value, key in table.entries("headers"):
        lowered = _injectable_header(name, key)
        if lowered in headers:
            raise ConfigError(
                key, f"header {lowered!r} is given twice (names ignore case)", "keep one of them"
            )
        headers[lowered] = _header_secret(value, key, table.ctx)
    return MappingProxyType(headers)


def _parse_mint(table: _Table | None, headers: Mapping[str, Secret], websocket: bool) -> MintConfig | None:
    if table is None:
        return None
    if not websocket:
        raise ConfigError(table.path, "is only for WebSocket routes", "set websocket = true, or remove mint")
    default = _MINT_DEFAULTS
    mint = MintConfig(
        key=table.required_value("key", _signing_key),
        ttl=table.duration("ttl", default.ttl),
        subject=table.convert("subject", default.subject, _subject),
        subscribe=table.minted_channel_patterns("subscribe"),
        publish=table.minted_channel_patterns("publish"),
        kid=table.optional_string("kid"),
        audience=table.optional_string("audience"),
        header=table.convert("header", default.header, _mint_header),
    )
    if mint.header in headers:
        problem = f"{mint.header!r} is also injected by headers, so one would overwrite the other"
        raise ConfigError(table.key("header"), problem, "remove it from headers, or mint into another header")
    return mint


def _parse_upstream_tls(table: _Table) -> UpstreamTls:
    default = UpstreamTls()
    tls = UpstreamTls(
        ca=table.convert("ca", default.ca, _existing_file),
        verify=table.boolean("verify", default.verify),
    )
    if tls.ca is not None and not tls.verify:
        raise ConfigError(
            table.key("verify"), "is false, so ca would be ignored", "remove ca, or set verify = true"
        )
    return tls


# ----------------------------------------------------------------------------------------------------------
# render_config: TOML out. Strings escape '$' as '$$' so that reading back does not substitute them.

_MASKED = f'"{MASK}"'


def _toml_string(text: str, *, escape_dollar: bool = True) -> str:
    if escape_dollar:
        text = text.replace("$", "$$")
    escaped = "".join(
        f"\\{char}" if char in '"\\' else f"\\u{ord(char):04X}" if char < " " or char == "\x7f" else char
        for char in text
    )
    return f'"{escaped}"'


def _toml_key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _toml_string(name, escape_dollar=False)


def _toml_bool(value: bool) -> str:
    return "true" if value else "false"


def _toml_array(items: Iterator[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(items) + "]"


def _toml_strings(items: tuple[str, ...]) -> str:
    return _toml_array(_toml_string(item) for item in items)


def _toml_inline(*pairs: tuple[str, str | None]) -> str:
    """An inline table from (key, rendered value) pairs; ``None`` values are left out."""
    shown = [f"{_toml_key(name)} = {value}" for name, value in pairs if value is not None]
    return "{ " + ", ".join(shown) + " }" if shown else "{}"


def _section(header: str, *pairs: tuple[str, str | None]) -> list[str]:
    """``[header]`` and its ``key = value`` lines; a ``None`` value becomes a comment saying it is unset."""
    lines = [
        f"{_toml_key(name)} = {value}" if value is not None else f"# {name}: not set" for name, value in pairs
    ]
    return ["", header, *lines]


def _optional(value: _T | None, render: Callable[[_T], str]) -> str | None:
    return None if value is None else render(value)


def _duration(seconds: float) -> str:
    return _toml_string(format_duration(seconds))


def _size(n: int) -> str:
    return _toml_string(format_size(n))


def _path(path: Path) -> str:
    return _toml_string(str(path))


def _render_hub(hub: HubConfig) -> list[str]:
    limits = hub.limits
    lines = [
        *_section(
            "[hub]",
            ("listen", _toml_string(str(hub.listen))),
            ("allowed_origins", _toml_strings(hub.allowed_origins)),
            ("allow_missing_origin", _toml_bool(hub.allow_missing_origin)),
            ("auth_header", _toml_string(hub.auth_header)),
            ("broker", _toml_string(_mask_url_password(hub.broker))),
            ("echo", _toml_bool(hub.echo)),
        ),
        *_section("[hub.history]", ("size", str(hub.history.size)), ("ttl", _duration(hub.history.ttl))),
        *_section(
            "[hub.limits]",
            ("max_message", _size(limits.max_message)),
            ("max_connections", str(limits.max_connections)),
            ("send_queue", _size(limits.send_queue)),
            ("ping_interval", _duration(limits.ping_interval)),
            ("handshake_timeout", _duration(limits.handshake_timeout)),
            ("shutdown_timeout", _duration(limits.shutdown_timeout)),
            ("max_subscriptions", str(limits.max_subscriptions)),
        ),
    ]
    for token in hub.tokens:
        lines += _section(
            "[[hub.tokens]]",
            ("name", _toml_string(token.name)),
            ("token", _MASKED),
            ("subscribe", _toml_strings(token.subscribe)),
            ("publish", _toml_strings(token.publish)),
        )
    if hub.signing is not None:
        keys = _toml_inline(*((kid, _MASKED) for kid in hub.signing.keys))
        lines += _section(
            "[hub.signing]", ("keys", keys), ("audience", _optional(hub.signing.audience, _toml_string))
        )
    tokens = _toml_array(_MASKED for _ in hub.publish_api.tokens)
    return lines + _section("[hub.publish_api]", ("tokens", tokens))


def _render_gateway(gateway: GatewayConfig) -> list[str]:
    tls, limits = gateway.tls, gateway.limits
    lines = [
        *_section(
            "[gateway]",
            ("listen", _toml_string(str(gateway.listen))),
            (
                "tls",
                None if tls is None else _toml_inline(("cert", _path(tls.cert)), ("key", _path(tls.key))),
            ),
            ("public_origins", _toml_strings(gateway.public_origins)),
            ("static", _optional(gateway.static, _path)),
            ("spa", _toml_bool(gateway.spa)),
            ("admin_listen", _optional(gateway.admin_listen, lambda address: _toml_string(str(address)))),
        ),
        *_section(
            "[gateway.limits]",
            ("max_connections", str(limits.max_connections)),
            ("handshake_timeout", _duration(limits.handshake_timeout)),
            ("max_header", _size(limits.max_header)),
            ("upstream_timeout", _duration(limits.upstream_timeout)),
            ("idle_timeout", _optional(limits.idle_timeout, _duration)),
            ("max_lifetime", _optional(limits.max_lifetime, _duration)),
            ("shutdown_timeout", _duration(limits.shutdown_timeout)),
        ),
    ]
    for route in gateway.routes:
        lines += _render_route(route)
    return lines


def _render_route(route: Route) -> list[str]:
    upstream = _toml_string(route.upstream[0]) if len(route.upstream) == 1 else _toml_strings(route.upstream)
    return _section(
        "[[gateway.routes]]",
        ("path", _toml_string(route.path)),
        ("upstream", upstream),
        ("websocket", _toml_bool(route.websocket)),
        ("change_origin", _toml_bool(route.change_origin)),
        ("headers", _toml_inline(*((name, _MASKED) for name in route.headers))),
        ("mint", _optional(route.mint, _render_mint)),
        (
            "tls",
            _toml_inline(("ca", _optional(route.tls.ca, _path)), ("verify", _toml_bool(route.tls.verify))),
        ),
        ("allow_missing_origin", _toml_bool(route.allow_missing_origin)),
        ("pass_cookies", _toml_bool(route.pass_cookies)),
        ("pass_authorization", _toml_bool(route.pass_authorization)),
        ("rewrite", _optional(route.rewrite, _toml_string)),
        ("forwarded", _toml_string(route.forwarded)),
    )


def _render_mint(mint: MintConfig) -> str:
    return _toml_inline(
        ("key", _MASKED),
        ("ttl", _duration(mint.ttl)),
        ("subject", _toml_string(mint.subject)),
        ("subscribe", _toml_strings(mint.subscribe)),
        ("publish", _toml_strings(mint.publish)),
        ("kid", _optional(mint.kid, _toml_string)),
        ("audience", _optional(mint.audience, _toml_string)),
        ("header", _toml_string(mint.header)),
    )


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:{MASK}@{host}").geturl()
