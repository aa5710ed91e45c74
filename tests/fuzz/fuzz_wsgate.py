"""Coverage-guided fuzzing (atheris / libFuzzer) of wsgate's parsers of untrusted bytes; not in `make test`.

    make fuzz                                    # every target, FUZZ_TIME seconds each (default 30)
    .venv/bin/python tests/fuzz/fuzz_wsgate.py TARGET [libFuzzer options, e.g. -max_total_time=60 corpus/]

Each target feeds arbitrary bytes to one parser and lets through only the exceptions that parser documents
(its refusals); anything else — a KeyError, an IndexError, a RecursionError, an assertion on an invariant —
is a crash libFuzzer reports with the input that caused it. The hypothesis tests in tests/hostile/test_fuzz.py
check the same parsers' properties on every `make test`; this finds inputs nobody thought of, given time.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from multidict import CIMultiDict

    from wsgate.auth.origins import normalize_origin
    from wsgate.auth.tokens import TokenVerifier, credential_from_headers
    from wsgate.config import parse_config
    from wsgate.errors import ConfigError, CredentialError, HandshakeError, ProtocolError
    from wsgate.gateway.forwarding import RejectedRequest, check_framing
    from wsgate.gateway.static import resolve
    from wsgate.gateway.upgrade import ResponseHeadParser, UpstreamProtocolError
    from wsgate.handshake import check_upgrade
    from wsgate.http_head import parse_request_head
    from wsgate.hub.frame_reader import Close, Failure, FrameReader
    from wsgate.hub.protocol import decode_command
    from wsgate.secret import Secret


def _fields(data: atheris.FuzzedDataProvider) -> list[tuple[str, str]]:
    names = ["Upgrade", "Connection", "Sec-WebSocket-Version", "Sec-WebSocket-Key", "Origin", "Authorization"]
    names += ["token", "Content-Length", "Transfer-Encoding", "Host"]
    fields = []
    for _ in range(data.ConsumeIntInRange(0, 12)):
        name = (
            names[data.ConsumeIntInRange(0, len(names) - 1)] if data.ConsumeBool() else data.ConsumeString(8)
        )
        fields.append((name, data.ConsumeString(40)))
    return fields


def _require(condition: object, what: str) -> None:
    if not condition:
        raise AssertionError(what)


def hub_message(raw: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_command(raw)


def upgrade(raw: bytes) -> None:
    data = atheris.FuzzedDataProvider(raw)
    method = data.ConsumeString(6)
    try:
        check_upgrade(method, CIMultiDict(_fields(data)))
    except HandshakeError as exc:
        _require(exc.status in (400, 426), f"status {exc.status}")


def credential(raw: bytes) -> None:
    data = atheris.FuzzedDataProvider(raw)
    name = ("authorization", "token")[data.ConsumeIntInRange(0, 1)]
    try:
        token = credential_from_headers(CIMultiDict(_fields(data)), name)
    except CredentialError:
        return
    assert token is None or (token and token == token.strip())


VERIFIER = TokenVerifier([], {"k1": Secret("fuzz-signing-key-0123456789abcdef0123")})


def token(raw: bytes) -> None:
    with contextlib.suppress(CredentialError):
        VERIFIER.verify(raw.decode("latin-1"))


def origin(raw: bytes) -> None:
    with contextlib.suppress(ValueError):
        normalize_origin(raw.decode("utf-8", "surrogateescape"))


def response_head(raw: bytes) -> None:
    parser = ResponseHeadParser(max_size=4096)
    data = atheris.FuzzedDataProvider(raw)
    try:
        while data.remaining_bytes():
            if parser.feed(data.ConsumeBytes(data.ConsumeIntInRange(1, 64))) is not None:
                return
        parser.feed_eof()
    except UpstreamProtocolError:
        pass


def framing(raw: bytes) -> None:
    try:
        check_framing(_fields(atheris.FuzzedDataProvider(raw)))
    except RejectedRequest as exc:
        _require(exc.status == 400, f"status {exc.status}")


def client_frames(raw: bytes) -> None:
    # Split the bytes where the input says, so that frames also arrive in pieces.
    data = atheris.FuzzedDataProvider(raw)
    reader = FrameReader(max_message=4096)
    while data.remaining_bytes():
        reader.feed(data.ConsumeBytes(data.ConsumeIntInRange(1, 64)))
        while (event := reader.next_event()) is not None:
            if isinstance(event, Failure):
                _require(event.code in (1002, 1007, 1009), f"close code {event.code}")
            if isinstance(event, (Close, Failure)):
                _require(reader.next_event() is None, "an event after the end")
                return


def request_head(raw: bytes) -> None:
    try:
        head = parse_request_head(raw + b"\r\n\r\n")
    except HandshakeError as exc:
        _require(exc.status in (400, 431), f"status {exc.status}")
    else:
        for name, value in head.fields:
            _require(not set(value) & {"\r", "\n", "\x00"}, "a control character in a value")
            _require(name and ":" not in name, "a malformed name")


ROOT = Path(tempfile.mkdtemp(prefix="wsgate-fuzz-"))
(ROOT / "index.html").write_text("<h1>fuzz</h1>")
(ROOT / "sub").mkdir()
(ROOT / "sub" / "a.js").write_text("1")
(ROOT / ".hidden").write_text("secret")


def static_path(raw: bytes) -> None:
    resolution = resolve(ROOT, raw.decode("latin-1"))
    if resolution.path is not None:
        assert resolution.path.is_relative_to(ROOT.resolve())
        assert not any(part.startswith(".") for part in resolution.path.relative_to(ROOT.resolve()).parts)


def interpolation(raw: bytes) -> None:
    text = raw.decode("utf-8", "replace")
    data = {"hub": {"auth_header": "token", "tokens": [{"name": "t", "token": text, "subscribe": ["k"]}]}}
    try:
        parse_config(data, env={"A": "alpha-secret", "B": "${A}"}, base_dir=ROOT)
    except ConfigError as exc:
        _require("alpha-secret" not in str(exc), "a secret in an error message")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "hub_message": hub_message,
    "upgrade": upgrade,
    "credential": credential,
    "token": token,
    "origin": origin,
    "response_head": response_head,
    "framing": framing,
    "static_path": static_path,
    "interpolation": interpolation,
    "client_frames": client_frames,
    "request_head": request_head,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]", file=sys.stderr)
        raise SystemExit(2)
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
