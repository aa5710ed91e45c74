"""``wsgate probe``: an audit of one WebSocket endpoint for cross-site WebSocket hijacking (CSWSH) holes.

A browser attaches cookies to every WebSocket it opens, and a proxy such as the seed's http-proxy-middleware
attaches its injected credential, whichever page asked. The ``Origin`` header is the only thing that tells the
server which page that was (RFC 6455 §10.2). The probe asks the endpoint, with about a dozen sequential
handshakes, whether it tells apart the legitimate page from other ones, and whether it really requires the
credential, and only in a header.

The module has two halves:

- **planning and verdicts, no I/O**: :func:`parse_target` and :func:`parse_header_spec` check what the user
  gave; :func:`plan` derives the cases (the look-alike Origins from the legitimate one); :func:`build_request`
  renders one case as the bytes of an HTTP/1.1 request; :func:`parse_status` reads the status code back;
  :func:`judge` turns a case and its outcome into a :class:`Finding`; :class:`Report` holds the findings, the
  exit status, the table and the JSON document.
- **I/O**: :func:`run` (and :func:`run_async`) sends each request over a fresh TCP (and TLS) connection with
  a timeout, reads the response head, and closes politely after a ``101``.

Verdicts (DESIGN.md §2): a **HOLE** is a ``101`` for a foreign, ``null``, look-alike, other-scheme or
other-port Origin, and - when a credential is given - a ``101`` without it, or with it only in the query
string. A ``101`` without an Origin, or without any credential when none was given, is a **warning**.
Equivalent spellings of the legitimate Origin (upper case, a trailing dot) are **info** either way. When the
legitimate Origin itself is refused, every other refusal proves nothing: the result is *inconclusive* and the
exit status 1, so that a moved endpoint cannot turn a CI audit silently green.

Errors: :class:`ProbeError` (a :class:`~wsgate.errors.WsgateError`) when the target cannot be audited at all
(unreachable, TLS failure, no HTTP answer to the legitimate handshake); :class:`ValueError` for bad input.
The credential appears in no message, no table and no JSON document.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import os
import re
import socket
import ssl
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit

from wsgate import __version__
from wsgate.auth.origins import DEFAULT_PORTS, normalize_origin
from wsgate.errors import WsgateError
from wsgate.secret import Secret

__all__ = [
    "DEFAULT_TIMEOUT",
    "FOREIGN_ORIGIN",
    "OVERSIZED_HEADER_BYTES",
    "Case",
    "Credential",
    "Finding",
    "Outcome",
    "ProbeError",
    "Report",
    "Target",
    "build_request",
    "judge",
    "parse_header_spec",
    "parse_status",
    "parse_target",
    "plan",
    "run",
    "run_async",
]

# Each request gets this long to connect, send and read the response head. A loopback or LAN endpoint answers
# in milliseconds and a distant one well within a second; 5 s tolerates a slow TLS handshake without letting
# a silent endpoint stall an audit of ~14 requests for minutes.
DEFAULT_TIMEOUT = 5.0
# How long to wait for the server's close frame after our own one (a courtesy so servers log a clean 1000).
CLOSE_WAIT = 1.0
# A response head longer than this is not read further: the status line is at its start.
MAX_RESPONSE_HEAD = 65536
# Twice the common request-head limits (Node.js 16 KiB, wsgate's gateway 16 KiB, aiohttp 8 KiB a line,
# nginx 8 KiB buffers): a server with any bound refuses it; one without shows it.
OVERSIZED_HEADER_BYTES = 32 * 1024
# RFC 2606 reserves .example: these names can never be a real site that someone meant to allow.
FOREIGN_ORIGIN = "https://evil.example"
EVIL_DOMAIN = "evil.example"
REDACTED = "[redacted]"

Verdict = Literal["ok", "HOLE", "warning", "info"]
Kind = Literal[
    "legit",
    "foreign",
    "null",
    "lookalike-suffix",
    "lookalike-prefix",
    "other-scheme",
    "other-port",
    "equivalent-case",
    "equivalent-dot",
    "no-origin",
    "no-credential",
    "query-credential",
    "oversized-header",
    "plain-get",
]
CredentialUse = Literal["header", "query", "none"]

_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 field-name
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Headers the probe writes itself: a credential under one of these names would corrupt the handshake.
_RESERVED_HEADERS = frozenset(
    {"host", "origin", "upgrade", "connection", "content-length", "transfer-encoding", "user-agent"}
)
_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: |\r|\n|$)")


class ProbeError(WsgateError):
    """The endpoint cannot be audited at all: unreachable, TLS failure, or no HTTP answer to the baseline."""


# ----------------------------------------------------------------------------------------------------------
# What the user asked for


@dataclass(frozen=True, slots=True)
class Credential:
    """The credential to present: header ``name`` (lower case) carries ``value``, read from ``$env_var``."""

    name: str
    value: Secret
    env_var: str

    @classmethod
    def create(cls, name: str, env_var: str, value: str) -> Credential:
        """Validate; messages name the header and variable, never the value."""
        if not value:
            raise ValueError(f"environment variable {env_var} is empty (the credential for header {name})")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(
                f"environment variable {env_var} holds a line break or NUL; it cannot be a header"
            )
        if not all(c == "\t" or " " <= c <= "~" for c in value):
            raise ValueError(
                f"environment variable {env_var} holds characters a header cannot carry "
                "(only printable ASCII)"
            )
        return cls(name=name.lower(), value=Secret(value), env_var=env_var)

    @property
    def query_param(self) -> tuple[str, str]:
        """The query parameter a server that reads credentials from URLs would look for.

        Named after the header (``token`` -> ``?token=``); an ``Authorization: Bearer`` credential becomes
        ``?access_token=`` (RFC 6750 §2.3), the name bearer-token servers use.
        """
        value = self.value.reveal()
        if self.name == "authorization" and value[:7].lower() == "bearer ":
            return "access_token", value[7:].strip()
        return self.name, value


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed ``WS_URL``, the legitimate Origin (normalised) and the optional credential."""

    url: str
    tls: bool
    host: str  # for connecting: no brackets around IPv6
    port: int
    host_header: str
    path: str  # request-target: path and query as given
    origin: str
    credential: Credential | None = None
    ca: Path | None = None

    @property
    def display_url(self) -> str:
        """The URL with every query value redacted: it might carry a ticket or token."""
        return _redact_query(self.url)


def parse_header_spec(spec: str) -> tuple[str, str]:
    """Split ``NAME:@ENVVAR`` into the header name and the variable name.

    A literal value (``token:s3cret``) is refused: it would be visible in ``ps`` and in shell history. The
    message never repeats what followed the colon.
    """
    name, colon, source = spec.partition(":")
    name = name.strip()
    if not colon or not name:
        raise ValueError("--header takes NAME:@ENVVAR, e.g. --header token:@WS_TOKEN")
    if not _TOKEN_RE.fullmatch(name):
        raise ValueError("--header: the header name may contain only letters, digits and !#$%&'*+.^_`|~-")
    if name.lower() in _RESERVED_HEADERS or name.lower().startswith("sec-websocket-"):
        raise ValueError(f"--header: the probe sets {name} itself; the credential needs another header")
    source = source.strip()
    if not source.startswith("@"):
        raise ValueError(
            "--header takes NAME:@ENVVAR: secrets are never command-line arguments (they show in ps and "
            "shell history); put the value in an environment variable, e.g. --header token:@WS_TOKEN"
        )
    env_var = source[1:]
    if not _ENV_RE.fullmatch(env_var):
        raise ValueError("--header: after '@' comes an environment variable name, e.g. @WS_TOKEN")
    return name, env_var


def parse_target(
    url: str, origin: str, credential: Credential | None = None, *, ca: Path | None = None
) -> Target:
    """Check ``WS_URL`` and ``--origin``. Raises :class:`ValueError` with a message fit for the user."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("WS_URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError("WS_URL must start with ws:// or wss://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "WS_URL must not contain user:password@; pass a credential with --header NAME:@ENVVAR"
        )
    if parts.fragment:
        raise ValueError("WS_URL must not have a #fragment (RFC 6455 §3)")
    host = parts.hostname
    if not host:
        raise ValueError("WS_URL has no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")  # what goes in Host and SNI: the xn-- form
        except UnicodeError:
            raise ValueError("WS_URL's host is not a valid (internationalised) domain name") from None
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError("WS_URL must not contain whitespace or control characters")
    if ca is not None and scheme != "wss":
        raise ValueError("--ca is for wss:// URLs")
    tls = scheme == "wss"
    default_port = 443 if tls else 80
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if port in (None, default_port) else f"{bracketed}:{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not path.isascii():
        path = quote(path, safe="!#$%&'()*+,/:;=?@[]~")  # a request-target is ASCII (RFC 3986 §2.1)
    if origin == "null":
        raise ValueError("--origin must be the legitimate page's origin, scheme://host[:port], not null")
    try:
        legit = normalize_origin(origin)
    except ValueError as exc:
        raise ValueError(f"--origin: {exc}") from None
    return Target(
        url=url,
        tls=tls,
        host=host,
        port=port or default_port,
        host_header=host_header,
        path=path,
        origin=legit,
        credential=credential,
        ca=ca,
    )


# ----------------------------------------------------------------------------------------------------------
# The cases


@dataclass(frozen=True, slots=True)
class Case:
    """One handshake to try: which Origin (``None``: no header), where the credential goes, and the shape."""

    kind: Kind
    title: str
    origin: str | None
    credential: CredentialUse
    upgrade: bool = True
    padding: int = 0  # bytes of an extra header, for the oversized-head case

    @property
    def id(self) -> str:
        return self.kind


def plan(target: Target) -> list[Case]:
    """The cases for ``target``, in the order they are sent (the legitimate baseline first).

    Look-alikes are derived from the legitimate Origin. ``evil-`` is put before the site's *domain*, not
    before the whole host: for ``https://kiosk.example.org`` the prefix look-alike is
    ``https://kiosk.evil-example.org`` (registrable by anyone, and admitted by a ``*.example.org`` check
    written as a bare ``endswith``), not
    ``https://evil-kiosk.example.org``, which lives under the owner's own domain and which a deliberate
    ``https://*.example.org`` allowlist entry rightly admits. Hosts that are IP addresses get no prefix
    look-alike, no upper-case and no trailing-dot variant; IPv6 hosts get no suffix look-alike either.
    """
    legit = target.origin
    scheme, _, hostport = legit.partition("://")
    host, port = _split_hostport(hostport)
    port_part = "" if port is None else f":{port}"
    is_ipv6 = host.startswith("[")
    is_ip = is_ipv6 or host.rsplit(".", 1)[-1].isdigit()
    header: CredentialUse = "header" if target.credential else "none"

    cases = [
        Case("legit", "legitimate Origin", legit, header),
        Case("foreign", "foreign Origin", FOREIGN_ORIGIN, header),
        Case("null", "Origin: null", "null", header),
    ]
    if not is_ipv6:
        suffix = f"{scheme}://{host}.{EVIL_DOMAIN}{port_part}"
        cases.append(Case("lookalike-suffix", "look-alike (suffix)", suffix, header))
    if not is_ip:
        labels = host.split(".")
        at = max(len(labels) - 2, 0)
        labels[at] = f"evil-{labels[at]}"
        prefix = f"{scheme}://{'.'.join(labels)}{port_part}"
        cases.append(Case("lookalike-prefix", "look-alike (evil- prefix)", prefix, header))
    other_scheme = "http" if scheme == "https" else "https"
    cases.append(Case("other-scheme", "other scheme", f"{other_scheme}://{host}{port_part}", header))
    effective_port = port if port is not None else DEFAULT_PORTS.get(scheme, 443)
    if port is None:
        other_port = 8080 if scheme == "http" else 8443
    else:
        other_port = effective_port + 1 if effective_port < 65535 else effective_port - 1
    cases.append(Case("other-port", "other port", f"{scheme}://{host}:{other_port}", header))
    if not is_ip and host.upper() != host:
        cases.append(
            Case("equivalent-case", "upper-case host", f"{scheme}://{host.upper()}{port_part}", header)
        )
    if not is_ip:
        cases.append(Case("equivalent-dot", "trailing dot", f"{scheme}://{host}.{port_part}", header))
    cases.append(Case("no-origin", "no Origin", None, header))
    cases.append(Case("no-credential", "no credential", legit, "none"))
    if target.credential is not None:
        cases.append(Case("query-credential", "credential in query only", legit, "query"))
    cases.append(Case("plain-get", "plain GET (no upgrade)", legit, header, upgrade=False))
    # Last: if a server falls over on it, the cases above have their answers already.
    cases.append(
        Case("oversized-header", "oversized header (32 KiB)", legit, header, padding=OVERSIZED_HEADER_BYTES)
    )
    return cases


def build_request(target: Target, case: Case, key: str) -> bytes:
    """The HTTP/1.1 request for ``case``. ``key`` is the ``Sec-WebSocket-Key`` (16 random bytes, base64)."""
    path = target.path
    credential = target.credential
    if case.credential == "query":
        assert credential is not None
        name, value = credential.query_param
        path += ("&" if "?" in path else "?") + f"{quote(name, safe='')}={quote(value, safe='')}"
    lines = [f"GET {path} HTTP/1.1", f"Host: {target.host_header}", f"User-Agent: wsgate-probe/{__version__}"]
    if case.upgrade:
        lines += [
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
    if case.origin is not None:
        lines.append(f"Origin: {case.origin}")
    if case.credential == "header":
        assert credential is not None
        lines.append(f"{credential.name}: {credential.value.reveal()}")
    if case.padding:
        lines.append("X-Wsgate-Probe-Padding: " + "a" * case.padding)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_status(head: bytes) -> int:
    """The status code of an HTTP/1.x response head, complete or not; :class:`ValueError` if not one."""
    match = _STATUS_RE.match(head)
    if match is None:
        raise ValueError("the answer is not an HTTP/1.1 response")
    return int(match.group(1))


# ----------------------------------------------------------------------------------------------------------
# Verdicts


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a request got: a status code, or ``error`` (our own words) when there was no HTTP answer.

    ``connected`` is false when not even a connection (TCP, TLS) could be made."""

    status: int | None
    error: str | None = None
    connected: bool = True

    @property
    def accepted(self) -> bool:
        return self.status == 101

    def describe(self) -> str:
        if self.status is not None:
            return str(self.status)
        return "no answer"


@dataclass(frozen=True, slots=True)
class Finding:
    case: Case
    outcome: Outcome
    verdict: Verdict
    why: str
    fix: str


# Why a refusal is the right answer, per case: shown instead of repeating the status.
_REFUSED = {
    "foreign": "pages of other sites cannot connect",
    "null": "sandboxed and file: pages cannot connect",
    "lookalike-suffix": "the whole origin is compared, not a prefix or substring",
    "lookalike-prefix": "domains are compared on label boundaries",
    "other-scheme": "the scheme is part of the comparison",
    "other-port": "the port is part of the comparison",
    "no-origin": "clients must send an Origin",
    "no-credential": "a credential is required",
    "query-credential": "the credential is not taken from the URL",
    "plain-get": "a request that asks for no upgrade is refused",
    "oversized-header": "request heads are bounded",
}

# Why a 101 is a hole, per Origin case.
_ORIGIN_HOLES = {
    "foreign": "any site a user visits can open this WebSocket, and the browser or proxy adds the credential "
    "for it (cross-site WebSocket hijacking)",
    "null": "sandboxed iframes and file: pages send Origin: null, and any site can make one",
    "lookalike-suffix": "a domain the attacker owns passes: the check matches a prefix or a substring, not "
    "the whole origin",
    "lookalike-prefix": "a domain anyone can register passes: the check matches a suffix without a dot "
    "boundary",
    "other-scheme": "a page of another scheme is another origin; a plain-http page can be rewritten by "
    "anyone on the network path",
    "other-port": "another port is another origin: any other service on the host (a dev server, an admin "
    "tool) can connect",
}


def judge(target: Target, case: Case, outcome: Outcome, baseline: Outcome | None = None) -> Finding:
    """The verdict for one case, given what the legitimate baseline got (``None``: this is the baseline).

    Pure: the same arguments always give the same finding.
    """
    verdict, why, fix = _judge(target, case, outcome, outcome if baseline is None else baseline)
    return Finding(case, outcome, verdict, why, fix)


def _judge(target: Target, case: Case, outcome: Outcome, baseline: Outcome) -> tuple[Verdict, str, str]:
    legit = target.origin
    status = outcome.status
    got = f"HTTP {status}" if status is not None else (outcome.error or "no answer")
    accepted = outcome.accepted
    kind = case.kind
    refused = _REFUSED.get(kind, "refused")
    if status is None:
        refused += f" ({got})"
    allowlist = f'public_origins = ["{legit}"] (gateway), allowed_origins (hub)'

    if kind == "legit":
        if accepted:
            return (
                "ok",
                "baseline: your page can connect, so refusals below come from what each case changes",
                "",
            )
        return (
            "warning",
            f"your own page is refused ({got}): the refusals below prove nothing; results inconclusive",
            "check WS_URL, --origin and --header (does the endpoint need a credential?)",
        )
    if kind in _ORIGIN_HOLES:
        if not accepted:
            return "ok", refused, ""
        fix = {
            "null": 'never list "null" in public_origins (gateway) or allowed_origins (hub)',
            "lookalike-suffix": f"compare whole origins, not prefixes or substrings: {allowlist}",
            "lookalike-prefix": f"compare whole origins, wildcards by whole labels: {allowlist}",
        }.get(kind, f"admit only your pages: {allowlist}")
        return "HOLE", _ORIGIN_HOLES[kind], fix
    if kind in ("equivalent-case", "equivalent-dot"):
        if accepted:
            return (
                "info",
                "your own origin spelled differently (host case, DNS root dot): accepting it is right",
                "",
            )
        if not baseline.accepted:
            return "info", f"refused ({got}), like your own page: this says nothing", ""
        if kind == "equivalent-case":
            why = "your own origin in upper case is refused: the check compares raw text; harmless, browsers "
            why += "send lower case"
        else:
            why = "your own origin with a trailing dot is refused: users who type the fully qualified name "
            why += "cannot connect"
        return "info", f"{why} ({got})", "normalise before comparing (wsgate does)"
    if kind == "no-origin":
        if not accepted:
            return "ok", refused, ""
        return (
            "warning",
            "clients without an Origin (scripts, not browsers: browsers always send one) can connect",
            "allow_missing_origin = false (the default) unless non-browser clients need it",
        )
    if kind == "no-credential":
        if not accepted:
            return "ok", refused, ""
        if target.credential is None:
            return (
                "warning",
                "connects without any credential: normal behind a gateway that injects one (the Origin check "
                "is then the only guard); a hole if browsers reach this endpoint directly",
                "behind a gateway keep public_origins exact; a hub checks auth_header against [[hub.tokens]] "
                "/ [hub.signing]",
            )
        return (
            "HOLE",
            f"connects without the {target.credential.name} header: the credential protects nothing",
            "require the credential on the server (auth_header with [[hub.tokens]] / [hub.signing]); if this "
            "URL is a gateway that injects it, probe it without --header",
        )
    if kind == "query-credential":
        if not accepted:
            return "ok", refused, ""
        return (
            "HOLE",
            "the credential works in the URL, which ends up in access logs, browser history and Referer, and "
            "which any page can build",
            "take the credential from a header only (auth_header); browsers connect through the "
            "gateway, which injects it",
        )
    if kind == "plain-get":
        if status is not None and 400 <= status < 500:
            return "ok", refused, ""
        if status is not None and 200 <= status < 400:
            return "info", f"the path answers plain GETs ({got}); fine if that is intended", ""
        return (
            "warning",
            f"a GET that asks for no upgrade gets {got}: the handshake is not validated before it is handled "
            "or proxied",
            "answer 426 Upgrade Required to requests without Upgrade: websocket (wsgate does)",
        )
    # oversized-header
    if status is not None and 400 <= status < 500:
        return "ok", refused, ""
    if status is not None and status < 400:
        return (
            "warning",
            f"a {OVERSIZED_HEADER_BYTES // 1024} KiB header was accepted ({got}): unbounded request "
            "heads let any client tie up memory",
            "bound request heads and answer 431 (wsgate: limits.max_header)",
        )
    return (
        "warning",
        f"an oversized header gets {got} instead of 431: if the server crashed, anyone can take it down",
        "bound request heads and answer 431 (wsgate: limits.max_header)",
    )


@dataclass(frozen=True, slots=True)
class Report:
    """Every finding for one target, with the overall result and exit status."""

    target: Target
    findings: tuple[Finding, ...]
    timeout: float = DEFAULT_TIMEOUT

    @property
    def holes(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "HOLE"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.verdict == "warning" and f.case.kind != "legit"]

    @property
    def baseline_accepted(self) -> bool:
        return any(f.case.kind == "legit" and f.outcome.accepted for f in self.findings)

    @property
    def result(self) -> Literal["holes", "inconclusive", "clean"]:
        if self.holes:
            return "holes"
        if not self.baseline_accepted:
            return "inconclusive"
        return "clean"

    @property
    def exit_status(self) -> int:
        """0 when no hole was found; 1 for holes, and when the baseline was refused (inconclusive)."""
        return 0 if self.result == "clean" else 1

    def summary(self) -> str:
        holes, warnings = self.holes, self.warnings
        notes = f"{len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
        if holes:
            names = ", ".join(f.case.title for f in holes)
            text = f"{len(holes)} HOLE{'S' if len(holes) != 1 else ''} ({names}); {notes}"
            if not self.baseline_accepted:
                text += "; the legitimate Origin was refused too"
        elif self.result == "inconclusive":
            baseline = next(f for f in self.findings if f.case.kind == "legit")
            text = (
                f"INCONCLUSIVE: the legitimate Origin was refused ({baseline.outcome.describe()}), so the "
                "refusals prove nothing; check WS_URL, --origin and --header"
            )
        else:
            text = f"no hole found; {notes}"
        return f"{text} (exit status {self.exit_status})"

    def to_dict(self) -> dict[str, Any]:
        credential = self.target.credential
        return {
            "wsgate_probe": 1,
            "target": self.target.display_url,
            "origin": self.target.origin,
            "credential": None
            if credential is None
            else {"header": credential.name, "env": credential.env_var, "value": REDACTED},
            "timeout_seconds": self.timeout,
            "result": self.result,
            "exit_status": self.exit_status,
            "holes": [f.case.id for f in self.holes],
            "warnings": [f.case.id for f in self.warnings],
            "summary": self.summary(),
            "cases": [
                {
                    "id": f.case.id,
                    "title": f.case.title,
                    "request": {
                        "origin": f.case.origin,
                        "credential": f.case.credential,
                        "query_param": credential.query_param[0]
                        if credential is not None and f.case.credential == "query"
                        else None,
                        "upgrade": f.case.upgrade,
                        "padding_bytes": f.case.padding,
                    },
                    "status": f.outcome.status,
                    "error": f.outcome.error,
                    "verdict": f.verdict,
                    "why": f.why,
                    "fix": f.fix or None,
                }
                for f in self.findings
            ],
        }

    def to_json(self) -> str:
        return self._scrub(json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    def render(self, width: int = 120) -> str:
        """The human-readable report: a header, the table, and a one-line summary."""
        credential = self.target.credential
        if credential is None:
            cred_text = "none given (--header NAME:@ENVVAR to test one)"
        else:
            cred_text = f"header {credential.name} from ${credential.env_var} (value {REDACTED})"
        lines = [
            f"wsgate probe {self.target.display_url}",
            f"  legitimate Origin  {self.target.origin}",
            f"  credential         {cred_text}",
            f"  requests           {len(self.findings)}, one at a time, {self.timeout:g} s timeout each",
            "",
        ]
        rows = [
            (
                _case_cell(self.target, f.case),
                f.outcome.describe(),
                f.verdict,
                f.why + (f"\nfix: {f.fix}" if f.fix else ""),
            )
            for f in self.findings
        ]
        lines += _table(("case", "status", "verdict", "why it matters / how to fix"), rows, width)
        lines += ["", *textwrap.wrap(self.summary(), width, break_on_hyphens=False)]
        return self._scrub("\n".join(lines) + "\n")

    def _scrub(self, text: str) -> str:
        """Belt and braces: the credential never reaches output, even through a bug or an echoing server."""
        credential = self.target.credential
        if credential is None:
            return text
        secrets = {credential.value.reveal(), credential.query_param[1]}
        for secret in sorted(secrets, key=len, reverse=True):
            if len(secret) >= 4:
                for form in {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}:
                    text = text.replace(form, REDACTED)
        return text


def _case_cell(target: Target, case: Case) -> str:
    if case.credential == "query" and target.credential is not None:
        detail = f"?{target.credential.query_param[0]}={REDACTED}, no {target.credential.name} header"
    elif case.origin is None:
        detail = "(no Origin header)"
    else:
        detail = case.origin
    return f"{case.title}\n{detail}"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], width: int) -> list[str]:
    """A plain-text table: every column but the last as wide as its content (the first at most 44
    characters), the last wrapped into what remains of ``width``."""
    rows = list(rows)
    widths = [
        max(len(line) for cell in [h, *(r[i] for r in rows)] for line in cell.split("\n"))
        for i, h in enumerate(headers[:-1])
    ]
    widths[0] = min(widths[0], 44)
    gap = 2
    widths.append(max(width - sum(widths) - gap * (len(headers) - 1), 40))
    out = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    for row in rows:
        cells = [_wrap(cell, w) for cell, w in zip(row, widths, strict=True)]
        for i in range(max(len(c) for c in cells)):
            parts = [(c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)]
            out.append("  ".join(parts).rstrip())
    return out


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        indent = " " * 5 if paragraph.startswith("fix: ") else ""  # continuation lines align after "fix: "
        lines += textwrap.wrap(paragraph, width, subsequent_indent=indent, break_on_hyphens=False) or [""]
    return lines


def _split_hostport(hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.index("]")
        host, rest = hostport[: end + 1], hostport[end + 1 :]
        return host, int(rest[1:]) if rest else None
    host, colon, port = hostport.partition(":")
    return host, int(port) if colon else None


def _redact_query(url: str) -> str:
    base, question, query = url.partition("?")
    if not question:
        return url
    pairs = parse_qsl(query, keep_blank_values=True)
    return base + "?" + "&".join(f"{quote(name, safe='')}={REDACTED}" for name, _ in pairs)


# ----------------------------------------------------------------------------------------------------------
# I/O: one connection per case, strictly one after another


def run(target: Target, *, timeout: float = DEFAULT_TIMEOUT) -> Report:
    """Audit ``target`` (blocking). Raises :class:`ProbeError` when it cannot be audited at all."""
    return asyncio.run(run_async(target, request_timeout=timeout))


async def run_async(target: Target, *, request_timeout: float = DEFAULT_TIMEOUT) -> Report:
    """Send every case of :func:`plan` in order and judge the answers."""
    context = _ssl_context(target) if target.tls else None
    findings: list[Finding] = []
    baseline: Outcome | None = None
    for case in plan(target):
        outcome = await _exchange(target, case, context, request_timeout)
        if baseline is None:  # the first case is the legitimate one
            if outcome.status is None:
                hint = " (is it a wss:// endpoint?)" if outcome.connected and not target.tls else ""
                raise ProbeError(f"cannot audit {target.display_url}: {outcome.error}{hint}")
            findings.append(judge(target, case, outcome))
            baseline = outcome
        else:
            findings.append(judge(target, case, outcome, baseline))
    return Report(target, tuple(findings), request_timeout)


def _ssl_context(target: Target) -> ssl.SSLContext:
    # Certificates and host names are always verified: an audit over a connection anyone could intercept
    # would prove nothing. A private CA is added with --ca, never switched off.
    try:
        return ssl.create_default_context(cafile=str(target.ca) if target.ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError(f"--ca {target.ca}: cannot load the CA certificates ({_describe(exc)})") from None


async def _exchange(target: Target, case: Case, context: ssl.SSLContext | None, limit: float) -> Outcome:
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    request = build_request(target, case, key)
    try:
        async with asyncio.timeout(limit):
            reader, writer = await asyncio.open_connection(
                target.host,
                target.port,
                ssl=context,
                server_hostname=target.host if context else None,
                limit=MAX_RESPONSE_HEAD,
            )
    except TimeoutError:
        return Outcome(None, f"no connection within {limit:g} s", connected=False)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(None, _describe(exc), connected=False)
    try:
        async with asyncio.timeout(limit):
            try:
                writer.write(request)
                await writer.drain()
            except OSError:
                pass  # a server may answer 431 and close before it has read all of an oversized request
            head = await _read_head(reader)
        if not head:
            return Outcome(None, "connection closed without an answer")
        try:
            status = parse_status(head)
        except ValueError as exc:
            return Outcome(None, str(exc))
        if status == 101:
            await _close_websocket(reader, writer)
        return Outcome(status)
    except TimeoutError:
        return Outcome(None, f"no answer within {limit:g} s")
    except (OSError, ssl.SSLError) as exc:
        return Outcome(None, _describe(exc))
    finally:
        writer.close()
        try:
            async with asyncio.timeout(CLOSE_WAIT):
                await writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            pass


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        return exc.partial  # closed early; a status line may still be there
    except asyncio.LimitOverrunError:
        return await reader.read(MAX_RESPONSE_HEAD)


async def _close_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send a masked close frame (1000) and give the server a moment to answer, so it logs a clean close."""
    mask = os.urandom(4)
    payload = (1000).to_bytes(2, "big")
    writer.write(
        bytes([0x88, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )
    try:
        async with asyncio.timeout(CLOSE_WAIT):
            await writer.drain()
            received = 0
            while received < MAX_RESPONSE_HEAD and (chunk := await reader.read(4096)):
                received += len(chunk)
    except (TimeoutError, OSError, ssl.SSLError):
        pass


def _describe(exc: BaseException) -> str:
    """A short description of a connection failure, in words a user can act on (never a credential)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({exc.verify_message}); for a private CA use --ca FILE"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc.__class__.__name__})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running, and is the port right?)"
    if isinstance(exc, ConnectionResetError):
        return "connection reset without an answer"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(exc, OSError) and (
        exc.errno == errno.ECONNREFUSED or "Connect call failed" in str(exc)  # several addresses, all refused
    ):
        return "connection refused (is the server running, and is the port right?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return exc.__class__.__name__
