"""`wsgate probe`: the pure planning and verdict logic case by case, then the whole command against real
servers on loopback - a deliberately vulnerable WebSocket server, a wsgate hub, a wsgate gateway, and the
seed's express + http-proxy-middleware proxy (npm) - plus an unreachable, a silent and a TLS target."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import pytest
import trustme
from aiohttp import web

from tests.conftest import (
    KIOSK_TOKEN,
    TIMEOUT,
    StartHub,
    free_port,
    make_hub_config,
    tls_server_context,
    ws_url,
)
from tests.echo_upstream import EchoUpstream
from wsgate.auth.origins import OriginPolicy
from wsgate.cli import main
from wsgate.config import Address, GatewayConfig, GatewayLimits, Route
from wsgate.gateway.server import GatewayServer
from wsgate.probe import (
    FOREIGN_ORIGIN,
    OVERSIZED_HEADER_BYTES,
    Case,
    Credential,
    Outcome,
    ProbeError,
    Report,
    Target,
    build_request,
    judge,
    parse_header_spec,
    parse_status,
    parse_target,
    plan,
    run_async,
)
from wsgate.secret import Secret

ORIGIN = "https://kiosk.example.org"
SECRET = "seed-ws-token-0123456789abcdef"
PEERS = Path(__file__).parent / "peers"
NPM_TIMEOUT = 300.0  # a cold `npm ci` of three packages; far less with a warm cache
HOLE_KINDS = {"foreign", "null", "lookalike-suffix", "lookalike-prefix", "other-scheme", "other-port"}
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's sample key


def credential(name: str = "token", value: str = SECRET, env: str = "WS_TOKEN") -> Credential:
    return Credential.create(name, env, value)


def target(
    url: str = "ws://127.0.0.1:8000/ws", origin: str = ORIGIN, cred: Credential | None = None
) -> Target:
    return parse_target(url, origin, cred)


def case_of(t: Target, kind: str) -> Case:
    (found,) = [c for c in plan(t) if c.kind == kind]
    return found


# ----------------------------------------------------------------------------------------------------------
# Input checks


def test_header_spec_names_a_header_and_an_environment_variable() -> None:
    assert parse_header_spec("token:@WS_TOKEN") == ("token", "WS_TOKEN")
    assert parse_header_spec("Authorization:@HUB_BEARER") == ("Authorization", "HUB_BEARER")


@pytest.mark.parametrize("spec", ["token:s3cret-literal", "token:s3cret-literal@x", "token"])
def test_a_literal_credential_on_the_command_line_is_refused_without_repeating_it(spec: str) -> None:
    with pytest.raises(ValueError, match="NAME:@ENVVAR") as refused:
        parse_header_spec(spec)
    assert "s3cret" not in str(refused.value)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bad name:@X", "header name"),
        (":@X", "NAME:@ENVVAR"),
        ("origin:@X", "sets origin itself"),
        ("Sec-WebSocket-Key:@X", "itself"),
        ("token:@1X", "environment variable name"),
        ("token:@", "environment variable name"),
    ],
)
def test_bad_header_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_header_spec(spec)


def test_credential_values_are_checked_without_being_shown() -> None:
    with pytest.raises(ValueError, match="WS_TOKEN is empty"):
        Credential.create("token", "WS_TOKEN", "")
    with pytest.raises(ValueError, match="line break") as refused:
        Credential.create("token", "WS_TOKEN", "abc\r\nX-Injected: 1")
    assert "Injected" not in str(refused.value)
    with pytest.raises(ValueError, match="printable ASCII"):
        Credential.create("token", "WS_TOKEN", "caf\u00e9-\u20ac")
    assert SECRET not in repr(credential())


def test_the_query_parameter_is_named_after_the_header() -> None:
    assert credential().query_param == ("token", SECRET)
    assert credential("Authorization", f"Bearer {SECRET}").query_param == ("access_token", SECRET)
    assert credential("authorization", "Basic abc").query_param == ("authorization", "Basic abc")


@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "path"),
    [
        ("ws://127.0.0.1:8000/ws", "127.0.0.1", 8000, "127.0.0.1:8000", "/ws"),
        ("wss://Site.Example/ws?kiosk=7", "site.example", 443, "site.example", "/ws?kiosk=7"),
        ("ws://site.example:80", "site.example", 80, "site.example", "/"),
        ("wss://[::1]:8443/ws", "::1", 8443, "[::1]:8443", "/ws"),
        (
            "ws://bücher.example/wß?k=ü",
            "xn--bcher-kva.example",
            80,
            "xn--bcher-kva.example",
            "/w%C3%9F?k=%C3%BC",
        ),
    ],
)
def test_ws_urls(url: str, host: str, port: int, host_header: str, path: str) -> None:
    t = target(url)
    assert (t.host, t.port, t.host_header, t.path, t.tls) == (host, port, host_header, path, url[:3] == "wss")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1/ws", "ws:// or wss://"),
        ("ws://user:pw@127.0.0.1/ws", "user:password"),
        ("ws://127.0.0.1/ws#x", "fragment"),
        ("ws:///ws", "no host"),
        ("ws://127.0.0.1:99999/ws", "not a valid URL"),
        ("ws://127.0.0.1/w s", "whitespace"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        target(url)


def test_the_origin_is_normalised_and_must_be_a_real_one() -> None:
    assert target(origin="HTTPS://Kiosk.Example.ORG:443").origin == ORIGIN
    for bad in ("null", "https://kiosk.example.org/", "kiosk.example.org"):
        with pytest.raises(ValueError, match="--origin"):
            target(origin=bad)


def test_ca_only_for_wss(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--ca"):
        parse_target("ws://127.0.0.1/ws", ORIGIN, ca=tmp_path / "ca.pem")


def test_display_url_redacts_query_values() -> None:
    assert (
        target("ws://h/ws?ticket=abc&kiosk=7").display_url == "ws://h/ws?ticket=[redacted]&kiosk=[redacted]"
    )


# ----------------------------------------------------------------------------------------------------------
# The plan


def test_the_plan_for_a_site_with_a_credential() -> None:
    cases = plan(target(cred=credential()))
    assert [c.kind for c in cases] == [
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
        "plain-get",
        "oversized-header",
    ]
    origins = {c.kind: c.origin for c in cases}
    assert origins == {
        "legit": ORIGIN,
        "foreign": FOREIGN_ORIGIN,
        "null": "null",
        "lookalike-suffix": "https://kiosk.example.org.evil.example",
        "lookalike-prefix": "https://kiosk.evil-example.org",
        "other-scheme": "http://kiosk.example.org",
        "other-port": "https://kiosk.example.org:8443",
        "equivalent-case": "https://KIOSK.EXAMPLE.ORG",
        "equivalent-dot": "https://kiosk.example.org.",
        "no-origin": None,
        "no-credential": ORIGIN,
        "query-credential": ORIGIN,
        "plain-get": ORIGIN,
        "oversized-header": ORIGIN,
    }
    uses = {c.kind: c.credential for c in cases}
    assert uses["no-credential"] == "none"
    assert uses["query-credential"] == "query"
    assert {k for k, v in uses.items() if v == "header"} == set(uses) - {"no-credential", "query-credential"}


def test_without_a_credential_nothing_is_sent_and_there_is_no_query_case() -> None:
    cases = plan(target())
    assert {c.credential for c in cases} == {"none"}
    assert "query-credential" not in {c.kind for c in cases}
    assert len(cases) == 13


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        (
            "http://localhost:8000",
            {
                "lookalike-suffix": "http://localhost.evil.example:8000",
                "lookalike-prefix": "http://evil-localhost:8000",
                "other-scheme": "https://localhost:8000",
                "other-port": "http://localhost:8001",
                "equivalent-case": "http://LOCALHOST:8000",
                "equivalent-dot": "http://localhost.:8000",
            },
        ),
        (
            "https://example.org",
            {
                "lookalike-suffix": "https://example.org.evil.example",
                "lookalike-prefix": "https://evil-example.org",
                "other-scheme": "http://example.org",
                "other-port": "https://example.org:8443",
                "equivalent-case": "https://EXAMPLE.ORG",
                "equivalent-dot": "https://example.org.",
            },
        ),
        (
            "http://app.example.org",
            {
                "lookalike-suffix": "http://app.example.org.evil.example",
                "lookalike-prefix": "http://app.evil-example.org",
                "other-scheme": "https://app.example.org",
                "other-port": "http://app.example.org:8080",
                "equivalent-case": "http://APP.EXAMPLE.ORG",
                "equivalent-dot": "http://app.example.org.",
            },
        ),
        (
            "http://127.0.0.1:65535",
            {
                "lookalike-suffix": "http://127.0.0.1.evil.example:65535",
                "other-scheme": "https://127.0.0.1:65535",
                "other-port": "http://127.0.0.1:65534",
            },
        ),
        ("http://[::1]:8000", {"other-scheme": "https://[::1]:8000", "other-port": "http://[::1]:8001"}),
    ],
)
def test_look_alikes_are_derived_from_the_legitimate_origin(origin: str, expected: dict[str, str]) -> None:
    derived = {
        c.kind: c.origin
        for c in plan(target(origin=origin))
        if c.kind not in ("legit", "foreign", "null", "no-origin", "no-credential", "plain-get")
        and c.kind != "oversized-header"
    }
    assert derived == expected


@pytest.mark.parametrize(
    "origin", ["https://kiosk.example.org", "http://localhost:8000", "https://example.org", "http://10.0.0.7"]
)
def test_every_hole_case_is_refused_and_every_equivalent_admitted_by_an_exact_allowlist(origin: str) -> None:
    """The plan and wsgate's own Origin matcher agree: a correct allowlist has no hole, so a HOLE is real."""
    policy = OriginPolicy([origin], allow_missing=False)
    for case in plan(target(origin=origin)):
        if case.kind in HOLE_KINDS:
            assert not policy.allows(case.origin), case
        elif case.origin is not None:
            assert policy.allows(case.origin), case


def test_the_prefix_look_alike_is_not_under_the_sites_own_domain() -> None:
    """A deliberate `https://*.example.org` entry must not turn into a reported hole (no false positive)."""
    policy = OriginPolicy(["https://*.example.org"], allow_missing=False)
    for case in plan(target(origin=ORIGIN)):
        if case.kind in HOLE_KINDS:
            assert not policy.allows(case.origin), case


# ----------------------------------------------------------------------------------------------------------
# Requests on the wire


def test_the_legitimate_request_is_a_valid_handshake_with_the_credential_in_its_header() -> None:
    t = target(cred=credential())
    request = build_request(t, case_of(t, "legit"), KEY)
    assert request.endswith(b"\r\n\r\n")
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /ws HTTP/1.1"
    assert "Host: 127.0.0.1:8000" in lines
    assert "Upgrade: websocket" in lines
    assert "Connection: Upgrade" in lines
    assert f"Sec-WebSocket-Key: {KEY}" in lines
    assert "Sec-WebSocket-Version: 13" in lines
    assert f"Origin: {ORIGIN}" in lines
    assert f"token: {SECRET}" in lines


def test_requests_without_the_credential_do_not_carry_it_anywhere() -> None:
    t = target("ws://127.0.0.1:8000/ws?kiosk=7", cred=credential())
    request = build_request(t, case_of(t, "no-credential"), KEY)
    assert SECRET.encode() not in request
    assert request.startswith(b"GET /ws?kiosk=7 HTTP/1.1\r\n")


def test_the_query_case_moves_the_credential_into_the_url() -> None:
    t = target("ws://127.0.0.1:8000/ws?kiosk=7", cred=credential(value="a b&c"))
    request = build_request(t, case_of(t, "query-credential"), KEY).decode()
    assert request.startswith("GET /ws?kiosk=7&token=a%20b%26c HTTP/1.1\r\n")
    assert "\r\ntoken:" not in request
    bearer = target(cred=credential("authorization", f"Bearer {SECRET}"))
    assert build_request(bearer, case_of(bearer, "query-credential"), KEY).startswith(
        f"GET /ws?access_token={SECRET} HTTP/1.1".encode()
    )


def test_no_origin_plain_get_and_oversized_requests() -> None:
    t = target()
    assert b"Origin:" not in build_request(t, case_of(t, "no-origin"), KEY)
    plain = build_request(t, case_of(t, "plain-get"), KEY)
    assert b"Upgrade" not in plain
    assert b"Sec-WebSocket" not in plain
    oversized = build_request(t, case_of(t, "oversized-header"), KEY)
    assert OVERSIZED_HEADER_BYTES < len(oversized) < OVERSIZED_HEADER_BYTES + 1024
    assert oversized.count(b"\r\n\r\n") == 1


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", 101),
        (b"HTTP/1.1 403 Forbidden\r\n\r\n", 403),
        (b"HTTP/1.0 431 Request Header Fields Too Large\r\n", 431),  # closed before the blank line
        (b"HTTP/1.1 426", 426),
        (b"HTTP/1.1 400\r\n\r\n", 400),  # reason phrases are optional
    ],
)
def test_status_lines(head: bytes, status: int) -> None:
    assert parse_status(head) == status


@pytest.mark.parametrize(
    "head", [b"", b"HTTP/1.1 10", b"SSH-2.0-OpenSSH\r\n", b"\x15\x03\x01\x00\x02", b"HTTP/2 200"]
)
def test_answers_that_are_not_http(head: bytes) -> None:
    with pytest.raises(ValueError, match="not an HTTP"):
        parse_status(head)


def test_status_line_fed_byte_by_byte() -> None:
    line = b"HTTP/1.1 101 Switching Protocols\r\n"
    for end in range(len(line) + 1):
        prefix = line[:end]
        if end >= len(b"HTTP/1.1 101"):
            assert parse_status(prefix) == 101
        else:
            with pytest.raises(ValueError, match="not an HTTP"):
                parse_status(prefix)


# ----------------------------------------------------------------------------------------------------------
# Verdicts

ACCEPTED, FORBIDDEN, UNAUTHORIZED = Outcome(101), Outcome(403), Outcome(401)


@pytest.mark.parametrize("kind", sorted(HOLE_KINDS))
def test_an_accepted_foreign_or_look_alike_origin_is_a_hole(kind: str) -> None:
    t = target()
    finding = judge(t, case_of(t, kind), ACCEPTED, ACCEPTED)
    assert finding.verdict == "HOLE"
    assert "public_origins" in finding.fix
    assert judge(t, case_of(t, kind), FORBIDDEN, ACCEPTED).verdict == "ok"
    assert judge(t, case_of(t, kind), Outcome(None, "connection reset"), ACCEPTED).verdict == "ok"


@pytest.mark.parametrize(
    ("kind", "with_credential", "outcome", "verdict"),
    [
        ("legit", False, ACCEPTED, "ok"),
        ("legit", True, UNAUTHORIZED, "warning"),
        ("equivalent-case", True, ACCEPTED, "info"),
        ("equivalent-dot", True, ACCEPTED, "info"),
        ("equivalent-case", True, FORBIDDEN, "info"),
        ("equivalent-dot", False, FORBIDDEN, "info"),
        ("no-origin", True, ACCEPTED, "warning"),
        ("no-origin", True, FORBIDDEN, "ok"),
        ("no-credential", True, ACCEPTED, "HOLE"),
        ("no-credential", True, UNAUTHORIZED, "ok"),
        ("no-credential", False, ACCEPTED, "warning"),
        ("query-credential", True, ACCEPTED, "HOLE"),
        ("query-credential", True, UNAUTHORIZED, "ok"),
        ("plain-get", True, Outcome(426), "ok"),
        ("plain-get", True, Outcome(404), "ok"),
        ("plain-get", True, Outcome(400), "ok"),
        ("plain-get", True, Outcome(200), "info"),
        ("plain-get", True, ACCEPTED, "warning"),
        ("plain-get", True, Outcome(502), "warning"),
        ("plain-get", True, Outcome(None, "connection reset"), "warning"),
        ("oversized-header", True, Outcome(431), "ok"),
        ("oversized-header", True, Outcome(400), "ok"),
        ("oversized-header", True, ACCEPTED, "warning"),
        ("oversized-header", True, Outcome(500), "warning"),
        ("oversized-header", True, Outcome(None, "connection closed without an answer"), "warning"),
    ],
)
def test_verdicts(kind: str, with_credential: bool, outcome: Outcome, verdict: str) -> None:
    t = target(cred=credential() if with_credential else None)
    assert judge(t, case_of(t, kind), outcome, ACCEPTED).verdict == verdict


def test_fixes_name_the_configuration_keys() -> None:
    t = target(cred=credential())
    assert "allow_missing_origin" in judge(t, case_of(t, "no-origin"), ACCEPTED, ACCEPTED).fix
    assert "auth_header" in judge(t, case_of(t, "query-credential"), ACCEPTED, ACCEPTED).fix
    assert "allowed_origins" in judge(t, case_of(t, "null"), ACCEPTED, ACCEPTED).fix


def test_a_refused_equivalent_says_nothing_when_the_baseline_was_refused_too() -> None:
    t = target()
    finding = judge(t, case_of(t, "equivalent-case"), UNAUTHORIZED, UNAUTHORIZED)
    assert "says nothing" in finding.why


def report_of(t: Target, outcomes: dict[str, Outcome]) -> Report:
    findings: list[Any] = []
    baseline = outcomes.get("legit", ACCEPTED)
    for case in plan(t):
        outcome = outcomes.get(case.kind, FORBIDDEN if case.kind != "legit" else baseline)
        findings.append(judge(t, case, outcome, None if case.kind == "legit" else baseline))
    return Report(t, tuple(findings))


def test_report_results_and_exit_statuses() -> None:
    t = target(cred=credential())
    clean = report_of(t, {})
    assert (clean.result, clean.exit_status, clean.holes) == ("clean", 0, [])
    assert "no hole found; 0 warnings" in clean.summary()

    warned = report_of(t, {"no-origin": ACCEPTED})
    assert (warned.result, warned.exit_status) == ("clean", 0)
    assert [f.case.kind for f in warned.warnings] == ["no-origin"]

    holes = report_of(t, {"foreign": ACCEPTED, "query-credential": ACCEPTED})
    assert (holes.result, holes.exit_status) == ("holes", 1)
    assert "2 HOLES (foreign Origin, credential in query only)" in holes.summary()

    inconclusive = report_of(t, {"legit": UNAUTHORIZED})
    assert (inconclusive.result, inconclusive.exit_status) == ("inconclusive", 1)
    assert "INCONCLUSIVE" in inconclusive.summary()
    assert inconclusive.warnings == []  # the refused baseline is the result, not a warning

    both = report_of(t, {"legit": UNAUTHORIZED, "null": ACCEPTED})
    assert both.result == "holes"
    assert "legitimate Origin was refused too" in both.summary()


def test_the_table_has_every_case_and_the_summary() -> None:
    t = target(cred=credential())
    text = report_of(t, {"foreign": ACCEPTED}).render(width=120)
    assert "case" in text
    assert "why it matters / how to fix" in text
    for case in plan(t):
        assert case.title in text
    assert "fix: admit only your pages" in text
    assert text.rstrip().endswith("(exit status 1)")
    assert all(len(line) <= 120 for line in text.splitlines())
    assert SECRET not in text


def test_output_is_scrubbed_even_if_a_finding_carried_the_credential() -> None:
    # Simulate a bug that puts the credential (raw and URL-encoded) into a finding's text.
    t = target(cred=credential(value='s3cr"et/x y'))
    finding = judge(t, case_of(t, "legit"), ACCEPTED)
    finding = replace(finding, why='leak s3cr"et/x y and s3cr%22et%2Fx%20y', fix='again s3cr"et/x y')
    leaky = Report(t, (finding,))
    for text in (leaky.render(), leaky.to_json()):
        assert "s3cr" not in text
        assert "[redacted]" in text


# ----------------------------------------------------------------------------------------------------------
# Real targets


async def probe_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `wsgate probe ...` as a user would (its own event loop, in a thread: the servers run on ours)."""
    code = await asyncio.to_thread(main, ["probe", *args])
    out, err = capsys.readouterr()
    return code, out, err


async def probe_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = await probe_cli(capsys, *args, "--json")
    assert err == ""
    document = json.loads(out)
    assert isinstance(document, dict)
    return code, document


def verdicts(document: dict[str, Any]) -> dict[str, str]:
    return {case["id"]: case["verdict"] for case in document["cases"]}


class VulnerableServer:
    """A WebSocket server with every mistake: any Origin, any or no credential, credentials from the URL.

    It also echoes whatever credential it received in a response header, so the tests can show the probe
    never prints what a server sends back."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str | None]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({"origin": request.headers.get("Origin"), "token": request.headers.get("token")})
        ws = web.WebSocketResponse()
        ws.headers["X-Echo"] = request.headers.get("token", "")
        await ws.prepare(request)
        async for _ in ws:
            pass
        return ws

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> VulnerableServer:
        app = web.Application()
        app.router.add_get("/ws", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def vulnerable() -> AsyncIterator[VulnerableServer]:
    server = await VulnerableServer().start()
    yield server
    await server.stop()


async def test_a_vulnerable_server_has_every_hole_named(
    vulnerable: VulnerableServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_TOKEN", SECRET)
    url = f"ws://127.0.0.1:{vulnerable.port}/ws"
    code, out, err = await probe_cli(capsys, url, "--origin", ORIGIN, "--header", "token:@WS_TOKEN")
    assert code == 1
    assert err == ""
    summary = out.strip().splitlines()[-1]
    assert "8 HOLES" in out
    for title in (
        "foreign Origin",
        "Origin: null",
        "look-alike (suffix)",
        "look-alike (evil- prefix)",
        "other scheme",
        "other port",
        "no credential",
        "credential in query only",
    ):
        assert title in out
    assert summary.endswith("(exit status 1)")
    # Bounded: one request per case; only the oversized one is refused before reaching the handler.
    assert len(vulnerable.requests) == len(plan(target(url, cred=credential()))) - 1 == 13


async def test_json_document(
    vulnerable: VulnerableServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_TOKEN", SECRET)
    url = f"ws://127.0.0.1:{vulnerable.port}/ws?kiosk=lobby-7"
    code, document = await probe_json(capsys, url, "--origin", ORIGIN, "--header", "token:@WS_TOKEN")
    assert code == 1
    assert document["wsgate_probe"] == 1
    assert document["target"] == f"ws://127.0.0.1:{vulnerable.port}/ws?kiosk=[redacted]"
    assert document["origin"] == ORIGIN
    assert document["credential"] == {"header": "token", "env": "WS_TOKEN", "value": "[redacted]"}
    assert document["result"] == "holes"
    assert document["exit_status"] == 1
    assert set(document["holes"]) == HOLE_KINDS | {"no-credential", "query-credential"}
    assert document["warnings"] == ["no-origin"]
    assert document["summary"].endswith("(exit status 1)")
    ids = [case["id"] for case in document["cases"]]
    assert ids[0] == "legit"
    assert len(ids) == len(set(ids)) == 14
    for case in document["cases"]:
        assert set(case) == {"id", "title", "request", "status", "error", "verdict", "why", "fix"}
        assert set(case["request"]) == {"origin", "credential", "query_param", "upgrade", "padding_bytes"}
        assert case["verdict"] in {"ok", "HOLE", "warning", "info"}
        assert case["status"] is None or isinstance(case["status"], int)
        assert (case["fix"] is None) == (case["verdict"] == "ok" or case["verdict"] == "info")
    query = next(c for c in document["cases"] if c["id"] == "query-credential")
    assert query["request"] == {
        "origin": ORIGIN,
        "credential": "query",
        "query_param": "token",
        "upgrade": True,
        "padding_bytes": 0,
    }
    assert query["status"] == 101


async def test_the_credential_never_appears_in_any_output(
    vulnerable: VulnerableServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_TOKEN", SECRET)
    url = f"ws://127.0.0.1:{vulnerable.port}/ws"
    outputs = [
        await probe_cli(capsys, url, "--origin", ORIGIN, "--header", "token:@WS_TOKEN"),
        await probe_cli(capsys, url, "--origin", ORIGIN, "--header", "token:@WS_TOKEN", "--json"),
    ]
    # The server saw it (it was really sent, and echoed back in a response header) ...
    assert SECRET in {r["token"] for r in vulnerable.requests}
    # ... and nothing the probe printed contains it.
    for _, out, err in outputs:
        assert out
        assert SECRET not in out
        assert SECRET not in err
        assert SECRET[:12] not in out


async def test_a_literal_credential_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await probe_cli(
        capsys, "ws://127.0.0.1:9/ws", "--origin", ORIGIN, "--header", f"token:{SECRET}"
    )
    assert code == 2
    assert out == ""
    assert "environment variable" in err
    assert SECRET not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ws://127.0.0.1:9/ws", "--origin", ORIGIN, "--header", "token:@WSGATE_TEST_UNSET_VAR"], "not set"),
        (["http://127.0.0.1:9/ws", "--origin", ORIGIN], "ws:// or wss://"),
        (["ws://127.0.0.1:9/ws", "--origin", "kiosk.example.org"], "--origin"),
    ],
)
async def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    os.environ.pop("WSGATE_TEST_UNSET_VAR", None)
    code, out, err = await probe_cli(capsys, *args)
    assert code == 2
    assert out == ""
    assert err.startswith("wsgate probe: ")
    assert message in err
    assert err.count("\n") == 1


async def test_a_wsgate_hub_with_allowlists_and_a_token_has_no_hole(
    start_hub: StartHub, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await start_hub(make_hub_config(auth_header="token"))
    monkeypatch.setenv("HUB_TOKEN", KIOSK_TOKEN)
    code, document = await probe_json(capsys, ws_url(hub), "--origin", ORIGIN, "--header", "token:@HUB_TOKEN")
    assert document["result"] == "clean"
    assert code == 0
    assert document["holes"] == []
    assert document["warnings"] == []
    found = verdicts(document)
    assert found["legit"] == "ok"
    assert found["equivalent-case"] == found["equivalent-dot"] == "info"  # the hub normalises: accepted
    statuses = {case["id"]: case["status"] for case in document["cases"]}
    assert statuses["foreign"] == statuses["no-origin"] == 403
    assert statuses["no-credential"] == statuses["query-credential"] == 401
    assert statuses["plain-get"] == 426
    assert statuses["oversized-header"] == 431


async def test_a_hub_probed_without_its_credential_is_inconclusive(
    start_hub: StartHub, capsys: pytest.CaptureFixture[str]
) -> None:
    hub = await start_hub(make_hub_config(auth_header="token"))
    code, out, _ = await probe_cli(capsys, ws_url(hub), "--origin", ORIGIN)
    assert code == 1
    assert "INCONCLUSIVE: the legitimate Origin was refused (401)" in " ".join(out.split())


@pytest.fixture
async def upstream() -> AsyncIterator[EchoUpstream]:
    server = await EchoUpstream(token=SECRET).start()
    yield server
    await server.stop()


@pytest.fixture
async def gateway(upstream: EchoUpstream) -> AsyncIterator[GatewayServer]:
    route = Route(
        path="/ws",
        upstream=(upstream.url,),
        websocket=True,
        change_origin=True,
        headers=MappingProxyType({"token": Secret(SECRET)}),
    )
    config = GatewayConfig(
        listen=Address("127.0.0.1", 0), public_origins=(ORIGIN,), routes=(route,), limits=GatewayLimits()
    )
    server = GatewayServer(config)
    await server.start()
    yield server
    await server.stop()


async def test_the_wsgate_gateway_closes_the_seeds_hole(
    gateway: GatewayServer, upstream: EchoUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    url = gateway.url.replace("http://", "ws://") + "/ws"
    code, document = await probe_json(capsys, url, "--origin", ORIGIN)
    assert code == 0
    assert document["result"] == "clean"
    assert document["holes"] == []
    # The gateway injects the credential, so the browser-facing URL needs none: expected, and said so.
    assert document["warnings"] == ["no-credential"]
    statuses = {case["id"]: case["status"] for case in document["cases"]}
    assert {statuses[kind] for kind in HOLE_KINDS | {"no-origin"}} == {403}
    # Refused Origins never reached the upstream, so its secret was added for none of them.
    assert {h["Origin"] for h in upstream.handshakes} <= {ORIGIN, "https://KIOSK.EXAMPLE.ORG", ORIGIN + "."}


# The seed's proxy: express + http-proxy-middleware from npm.


def _cannot_run(reason: str) -> NoReturn:
    """Skip loudly on a developer's machine; fail on CI, where `make test` installs node and npm."""
    if os.environ.get("CI"):
        pytest.fail(reason.replace("SKIPPED LOUDLY", "CANNOT RUN"))
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_peers() -> Path:
    """tests/peers with its pinned npm packages installed (`npm ci` once, only when they are missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _cannot_run(
            "SKIPPED LOUDLY: node and npm are needed for the seed proxy test (apt-get install nodejs npm)"
        )
    installed = (
        subprocess.run(
            [npm, "ls", "--depth=0"], cwd=PEERS, capture_output=True, timeout=60, check=False
        ).returncode
        == 0
    )
    if not installed:
        command = [
            npm,
            "ci" if (PEERS / "package-lock.json").exists() else "install",
            "--no-audit",
            "--no-fund",
        ]
        try:
            result = subprocess.run(
                [*command, "--loglevel=error"], cwd=PEERS, capture_output=True, text=True, timeout=NPM_TIMEOUT
            )
        except subprocess.TimeoutExpired:
            _cannot_run(f"SKIPPED LOUDLY: `{' '.join(command)}` in tests/peers took over {NPM_TIMEOUT:g} s")
        if result.returncode != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:])
            _cannot_run(f"SKIPPED LOUDLY: `{' '.join(command)}` in tests/peers failed: {tail}")
    return PEERS


@pytest.fixture
async def seed_proxy(node_peers: Path, upstream: EchoUpstream) -> AsyncIterator[int]:
    """The seed's proxy in front of the echo upstream (which requires the token); yields its port."""
    env = {**os.environ, "TARGET": f"ws://127.0.0.1:{upstream.port}", "WS_TOKEN": SECRET, "PORT": "0"}
    process = await asyncio.create_subprocess_exec(
        "node", "hpm_seed_proxy.js", cwd=node_peers, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        word, _, port = line.decode().strip().partition(" ")
        assert word == "listening", line
        yield int(port)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), TIMEOUT)


async def test_the_seeds_express_proxy_accepts_foreign_origins(
    seed_proxy: int, upstream: EchoUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    code, document = await probe_json(capsys, f"ws://127.0.0.1:{seed_proxy}/ws", "--origin", ORIGIN)
    assert code == 1
    assert document["result"] == "holes"
    assert set(document["holes"]) == HOLE_KINDS
    assert set(document["warnings"]) == {"no-origin", "no-credential"}
    # The proxy added the secret for the attacker's page:
    (foreign,) = [h for h in upstream.handshakes if h.get("Origin") == FOREIGN_ORIGIN]
    assert foreign["token"] == SECRET


# Failures


async def test_a_target_that_is_down_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"ws://127.0.0.1:{free_port()}/ws"
    code, out, err = await probe_cli(capsys, url, "--origin", ORIGIN, "--json")
    assert code == 1
    assert out == ""
    refused = "connection refused (is the server running, and is the port right?)"
    assert err == f"wsgate probe: cannot audit {url}: {refused}\n"


async def test_a_server_that_closes_without_answering(capsys: pytest.CaptureFixture[str]) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        code, _, err = await probe_cli(capsys, f"ws://127.0.0.1:{port}/ws", "--origin", ORIGIN)
    assert code == 1
    assert "closed without an answer" in err or "reset" in err
    assert "wss://" in err  # the hint: maybe it needs TLS


async def test_a_silent_server_times_out_per_request() -> None:
    accepted = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        accepted.set()

    server = await asyncio.start_server(stay_silent, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ProbeError, match=r"no answer within 0\.2 s"):
            await run_async(target(f"ws://127.0.0.1:{port}/ws"), request_timeout=0.2)
        for writer in writers:
            writer.close()
    assert accepted.is_set()


@pytest.fixture
async def tls_vulnerable(ca: trustme.CA) -> AsyncIterator[VulnerableServer]:
    server = await VulnerableServer().start(tls_server_context(ca))
    yield server
    await server.stop()


async def test_wss_verifies_certificates_and_takes_a_private_ca(
    tls_vulnerable: VulnerableServer, ca: trustme.CA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"wss://127.0.0.1:{tls_vulnerable.port}/ws"
    code, out, err = await probe_cli(capsys, url, "--origin", ORIGIN)
    assert code == 1
    assert out == ""
    assert "certificate verification failed" in err
    assert "--ca FILE" in err

    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    code, document = await probe_json(capsys, url, "--origin", ORIGIN, "--ca", str(ca_file))
    assert code == 1
    assert set(document["holes"]) == HOLE_KINDS


def test_the_probe_is_registered_and_its_help_says_how_credentials_are_passed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["probe", "--help"])
    out = capsys.readouterr().out
    assert "NAME:@ENVVAR" in out
    assert "--ca" in out
