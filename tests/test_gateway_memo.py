"""The handshake memo (wsgate.gateway.memo): shapes, templates, the bounded memory, and above all that the
memo path gives byte for byte what the full path gives, for the upstream requests and the upstream's 101."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, reject, settings
from hypothesis import strategies as st

from wsgate.auth.origins import OriginPolicy
from wsgate.config import Route
from wsgate.errors import ForbiddenError, WsgateError
from wsgate.gateway.memo import (
    MAX_SHAPE_BYTES,
    Answers,
    Memory,
    Plans,
    Shape,
    Switched,
    Template,
    Unrecalled,
    UpgradePlan,
    request_shape,
    response_shape,
)
from wsgate.gateway.upgrade import (
    ClientRequest,
    ResponseHeadParser,
    UpstreamProtocolError,
    WebSocketOffer,
    accept_key,
    build_websocket_request,
    check_switching_protocols,
    client_switching_response,
    parse_upstream,
    websocket_offer,
)
from wsgate.handshake import check_upgrade, single_header
from wsgate.http_head import parse_request_head
from wsgate.secret import Secret

# RFC 6455 §1.3's example key, and another canonical one (base64 of bytes 0-15).
KEY_1 = "dGhlIHNhbXBsZSBub25jZQ=="
KEY_2 = base64.b64encode(bytes(range(16))).decode("ascii")
ORIGIN = "https://kiosk.example.org"
FOREIGN_ORIGIN = "https://evil.example.com"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"
SECRET = "gateway-secret-0123456789abcdef"
UPSTREAM_1 = "wss://hub-1.internal:9000/ws"
UPSTREAM_2 = "ws://hub-2.internal/ws?pool=b"
PEER = "203.0.113.9"
ORIGINS = OriginPolicy([ORIGIN, "https://*.example.net"], allow_missing=False)
# A frame right behind a 101: a text frame "hello".
FRAME = b"\x81\x05hello"


def make_route(**changes: Any) -> Route:
    return replace(Route(path="/ws", upstream=(UPSTREAM_1,), websocket=True), **changes)


def secret_headers(values: Mapping[str, str]) -> Mapping[str, Secret]:
    return MappingProxyType({name: Secret(value) for name, value in values.items()})


def browser_head(
    key: str,
    *,
    user_agent: str = USER_AGENT,
    origin: str = ORIGIN,
    key_line: str = "Sec-WebSocket-Key: {key}",
    extra: Sequence[str] = (),
    target: str = "/ws?kiosk=7",
) -> bytes:
    """A browser's upgrade request head, its lines as given (``key_line`` with ``{key}`` for the key)."""
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: kiosk.example.org",
        "Connection: Upgrade",
        "Upgrade: websocket",
        f"Origin: {origin}",
        "Sec-WebSocket-Version: 13",
        f"User-Agent: {user_agent}",
        key_line.format(key=key),
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def switching_head(accept: str, *, accept_line: str = "Sec-WebSocket-Accept: {accept}") -> bytes:
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        accept_line.format(accept=accept),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def full_requests(
    raw: bytes,
    route: Route,
    *,
    peer: str = PEER,
    scheme: str = "https",
    origins: OriginPolicy = ORIGINS,
) -> tuple[dict[str, bytes], WebSocketOffer]:
    """The full path, as WebSocketProxy._upstream_requests takes it without the memo; raises the refusal."""
    head = parse_request_head(raw)
    check_upgrade(head.method, head.headers)
    origins.check(single_header(head.headers, "Origin"))
    client = ClientRequest(head.method, head.target, head.fields, peer, scheme, head.headers.get("Host"))
    injected = {name: value.reveal() for name, value in route.headers.items()}
    requests = {
        url: build_websocket_request(route, parse_upstream(url), client, injected=injected)
        for url in route.upstream
    }
    return requests, websocket_offer(client)


def full_answer(data: bytes, offer: WebSocketOffer) -> tuple[bytes, bytes]:
    """The full path for the upstream's first bytes, holding a whole 101 head: the client's 101 and what
    followed the head; raises UpstreamProtocolError as WebSocketProxy does."""
    parser = ResponseHeadParser()
    head = parser.feed(data)
    assert head is not None
    check_switching_protocols(head, offer.key, offer.protocols, offer.extensions)
    return client_switching_response(head), parser.leftover


# ----------------------------------------------------------------------------------------------------------
# request_shape


def test_heads_differing_only_in_the_key_have_one_shape_and_give_their_keys() -> None:
    first = request_shape(browser_head(KEY_1))
    second = request_shape(browser_head(KEY_2))
    assert first is not None
    assert second is not None
    assert first[0] == second[0]
    assert (first[1], second[1]) == (KEY_1, KEY_2)


def test_the_shape_is_the_head_without_the_key_value_and_where_it_was_cut() -> None:
    raw = browser_head(KEY_1)
    found = request_shape(raw)
    assert found is not None
    (at, rest), key = found
    assert raw[at : at + len(key)] == key.encode("ascii")
    assert rest == raw[:at] + raw[at + len(key) :]


def test_a_head_differing_in_one_other_byte_has_another_shape() -> None:
    first = request_shape(browser_head(KEY_1, user_agent="Mozilla/5.0 Chrome/131.0"))
    second = request_shape(browser_head(KEY_1, user_agent="Mozilla/5.0 Chrome/132.0"))
    assert first is not None
    assert second is not None
    assert first[0] != second[0]


@pytest.mark.parametrize("name", ["sec-websocket-key", "SEC-WEBSOCKET-KEY", "Sec-Websocket-Key"])
def test_the_key_header_name_matches_in_any_case(name: str) -> None:
    found = request_shape(browser_head(KEY_1, key_line=name + ": {key}"))
    assert found is not None
    assert found[1] == KEY_1
    assert name.encode("ascii") in found[0][1]


@pytest.mark.parametrize(
    "line", ["Sec-WebSocket-Key:{key}", "Sec-WebSocket-Key: \t {key}\t ", "Sec-WebSocket-Key:{key}  "]
)
def test_whitespace_around_the_key_is_allowed_and_part_of_the_shape(line: str) -> None:
    spaced = request_shape(browser_head(KEY_1, key_line=line))
    plain = request_shape(browser_head(KEY_1))
    assert spaced is not None
    assert plain is not None
    assert spaced[1] == KEY_1
    assert spaced[0] != plain[0]
    # Still one shape for every key.
    other = request_shape(browser_head(KEY_2, key_line=line))
    assert other is not None
    assert other[0] == spaced[0]


@pytest.mark.parametrize(
    "key",
    [
        "dGhlIHNhbXBsZSBub25jZQ",  # no padding
        "dGhlIHNhbXBsZSBub25jZQ=",  # one "=" short
        "dGhlIHNhbXBsZSBub25jZQ===",  # one "=" too many
        "dGhlIHNhbXBsZSBub25jZ==",  # 21 characters and "=="
        "AdGhlIHNhbXBsZSBub25jZQ==",  # 23 characters and "=="
        "dGhlIHNhbXBsZSBub25jZQab",  # 24 characters, 18 bytes, no padding
        base64.b64encode(bytes(17)).decode("ascii"),  # 23 characters and "=": valid base64, 17 bytes
        base64.b64encode(bytes(15)).decode("ascii"),  # 20 characters, 15 bytes
        "dGhlIHNhbXBsZSBub25jZ-==",  # base64url, not base64
        "dGhlIHNhbXBsZSBub25jZ_==",
        "dGhlIHNhbXBs ZSBub25jZQ==",  # a space inside the value
        "dGhlIHNhbXBsZSBub25jZQ==, dGhlIHNhbXBsZSBub25jZQ==",  # a list
        "dGhlIHNhbXBsZSBub25jZQ==x",
        "",
    ],
)
def test_a_non_canonical_key_has_no_shape(key: str) -> None:
    assert request_shape(browser_head(key)) is None


def test_a_head_without_a_key_line_has_no_shape() -> None:
    assert request_shape(browser_head(KEY_1, key_line="X-Note: none")) is None


@pytest.mark.parametrize(
    "line",
    [
        "X-Sec-WebSocket-Key: {key}",  # another header whose name ends like it
        "Sec-WebSocket-Key-2: {key}",
        "User-Agent-Note: x Sec-WebSocket-Key: {key}",  # inside another line's value
        "Sec-WebSocket-Key : {key}",  # not a field line (whitespace before the colon)
    ],
)
def test_only_a_whole_key_line_is_cut(line: str) -> None:
    assert request_shape(browser_head(KEY_1, key_line=line)) is None


def test_a_head_over_max_shape_bytes_has_no_shape() -> None:
    bare = len(browser_head(KEY_1, extra=["X-Pad: "]))
    fits = browser_head(KEY_1, extra=["X-Pad: " + "a" * (MAX_SHAPE_BYTES - bare)])
    assert len(fits) == MAX_SHAPE_BYTES
    assert request_shape(fits) is not None
    over = browser_head(KEY_1, extra=["X-Pad: " + "a" * (MAX_SHAPE_BYTES - bare + 1)])
    assert request_shape(over) is None


def test_with_two_key_lines_the_first_canonical_one_is_cut() -> None:
    raw = browser_head(
        KEY_1,
        key_line="Sec-WebSocket-Key: short\r\nSec-WebSocket-Key: {key}",
        extra=[f"Sec-WebSocket-Key: {KEY_2}"],
    )
    found = request_shape(raw)
    assert found is not None
    (at, rest), key = found
    assert key == KEY_1
    assert b"Sec-WebSocket-Key: short\r\n" in rest
    assert f"Sec-WebSocket-Key: {KEY_2}\r\n".encode("ascii") in rest
    assert KEY_1.encode("ascii") not in rest
    assert raw[at:].startswith(KEY_1.encode("ascii"))


def test_where_the_key_was_cut_is_part_of_the_shape() -> None:
    """One space more before the key and one fewer after it: the bytes around the key are the same, cut one
    byte apart. The two heads differ in more than their key, so they must not share a shape."""
    left = browser_head(KEY_1, key_line="Sec-WebSocket-Key: {key}  ")
    right = browser_head(KEY_1, key_line="Sec-WebSocket-Key:  {key} ")
    found_left, found_right = request_shape(left), request_shape(right)
    assert found_left is not None
    assert found_right is not None
    (at_left, rest_left), _ = found_left
    (at_right, rest_right), _ = found_right
    assert rest_left == rest_right
    assert at_left != at_right
    assert found_left[0] != found_right[0]


# ----------------------------------------------------------------------------------------------------------
# response_shape


def test_response_shape_needs_the_whole_head() -> None:
    data = switching_head(accept_key(KEY_1))
    for end in range(len(data)):
        assert response_shape(data[:end]) is None
    assert response_shape(data) is not None


def test_response_shape_gives_the_accept_and_where_the_head_ends() -> None:
    head = switching_head(accept_key(KEY_1))
    found = response_shape(head + FRAME)
    assert found is not None
    (at, rest), accept, end = found
    assert accept == accept_key(KEY_1)
    assert end == len(head)
    assert (head + FRAME)[end:] == FRAME
    assert rest == head[:at] + head[at + len(accept) :]


def test_response_shape_ignores_what_follows_the_head() -> None:
    """Bytes after the head are the upstream's frames: an accept line among them is no part of the head, and
    what follows does not change the shape."""
    line = f"\r\nSec-WebSocket-Accept: {accept_key(KEY_1)}\r\n\r\n".encode("ascii")
    assert response_shape(switching_head("", accept_line="X-Note: none") + line) is None
    head = switching_head(accept_key(KEY_1))
    with_frame, without = response_shape(head + FRAME + line), response_shape(head)
    assert with_frame is not None
    assert without is not None
    assert with_frame[:2] == without[:2]


@pytest.mark.parametrize(
    "accept",
    [
        accept_key(KEY_1)[:-1],  # no padding
        accept_key(KEY_1)[1:],  # 26 characters and "="
        "A" + accept_key(KEY_1),  # 28 characters and "="
        accept_key(KEY_1) + "=",
        accept_key(KEY_1).replace("=", "-"),
        accept_key(KEY_1)[:10] + " " + accept_key(KEY_1)[11:],
        "",
    ],
)
def test_a_non_canonical_accept_has_no_response_shape(accept: str) -> None:
    assert response_shape(switching_head(accept) + FRAME) is None


def test_the_accept_header_name_matches_in_any_case() -> None:
    found = response_shape(switching_head(accept_key(KEY_1), accept_line="sec-websocket-accept:\t{accept} "))
    assert found is not None
    assert found[1] == accept_key(KEY_1)


# ----------------------------------------------------------------------------------------------------------
# Template, UpgradePlan


def test_template_filled_with_its_value_gives_the_bytes_back() -> None:
    head = switching_head(accept_key(KEY_1))
    template = Template.around(head, b"Sec-WebSocket-Accept", accept_key(KEY_1))
    assert template is not None
    assert template.fill(accept_key(KEY_1)) == head
    assert template.fill(accept_key(KEY_2)) == switching_head(accept_key(KEY_2))


def test_template_is_none_when_the_line_is_absent_or_there_twice() -> None:
    accept = accept_key(KEY_1)
    assert Template.around(switching_head(accept), b"Sec-WebSocket-Accept", accept_key(KEY_2)) is None
    assert Template.around(switching_head(accept), b"Sec-WebSocket-Key", accept) is None
    twice = switching_head(
        accept, accept_line="Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Accept: {accept}"
    )
    assert Template.around(twice, b"Sec-WebSocket-Accept", accept) is None


def test_template_repr_shows_none_of_its_bytes() -> None:
    request = build_websocket_request(
        make_route(),
        parse_upstream(UPSTREAM_1),
        ClientRequest("GET", "/ws", parse_request_head(browser_head(KEY_1)).fields, PEER, "https", None),
        injected={"token": SECRET},
    )
    template = Template.around(request, b"Sec-WebSocket-Key", KEY_1)
    assert template is not None
    assert SECRET.encode("ascii") in template.fill(KEY_1)
    assert SECRET not in repr(template)
    assert "token" not in repr(template)
    assert KEY_1 not in repr(template)


def test_upgrade_plan_repr_shows_none_of_its_bytes() -> None:
    route = make_route(upstream=(UPSTREAM_1, UPSTREAM_2), headers=secret_headers({"token": SECRET}))
    plan = UpgradePlan.of(*full_requests(browser_head(KEY_1), route))
    assert plan is not None
    assert all(SECRET.encode("ascii") in request for request in plan.fill(KEY_2)[0].values())
    text = repr(plan)
    assert SECRET not in text
    assert KEY_1 not in text
    assert "token" not in text


def test_upgrade_plan_is_none_when_a_request_lacks_the_key_line() -> None:
    offer = WebSocketOffer(KEY_1, (), extensions=False)
    good = b"GET / HTTP/1.1\r\nSec-WebSocket-Key: " + KEY_1.encode("ascii") + b"\r\n\r\n"
    assert UpgradePlan.of({"a": good, "b": b"GET / HTTP/1.1\r\n\r\n"}, offer) is None


def test_plans_recall_a_head_for_the_peer_it_passed_for_with_the_new_key() -> None:
    plans = Plans()
    route = make_route(headers=secret_headers({"token": SECRET}))
    raw_1, raw_2 = browser_head(KEY_1), browser_head(KEY_2)
    assert plans.recall(raw_1, PEER) is None
    plans.remember(raw_1, PEER, *full_requests(raw_1, route))
    assert plans.recall(raw_2, PEER) == full_requests(raw_2, route)
    # The forwarding headers carry the client's address: another client's head is another entry.
    assert plans.recall(raw_2, "198.51.100.7") is None
    assert len(plans) == 1


def test_plans_remember_nothing_for_a_head_without_raw_bytes_or_a_canonical_key() -> None:
    plans = Plans()
    route = make_route()
    requests, offer = full_requests(browser_head(KEY_1), route)
    plans.remember(b"", PEER, requests, offer)  # a head aiohttp parsed
    plans.remember(browser_head("not-a-key"), PEER, requests, offer)
    assert len(plans) == 0


# ----------------------------------------------------------------------------------------------------------
# Memory


def test_memory_holds_at_most_size_entries() -> None:
    memory: Memory[int, str] = Memory(size=3)
    for number in range(10):
        memory.put(number, str(number))
        assert len(memory) == min(number + 1, 3)
    assert [memory.get(number) for number in range(10)] == [None] * 7 + ["7", "8", "9"]


def test_memory_drops_the_least_recently_used_first() -> None:
    memory: Memory[str, int] = Memory(size=3)
    memory.put("a", 1)
    memory.put("b", 2)
    memory.put("c", 3)
    assert memory.get("a") == 1  # "a" is used: "b" is now the least recently used
    memory.put("d", 4)
    assert memory.get("b") is None
    assert (memory.get("a"), memory.get("c"), memory.get("d")) == (1, 3, 4)
    memory.put("e", 5)  # "a" was used longest ago
    assert memory.get("a") is None
    assert len(memory) == 3


def test_memory_put_of_a_present_key_replaces_its_value() -> None:
    memory: Memory[str, int] = Memory(size=2)
    memory.put("a", 1)
    memory.put("b", 2)
    memory.put("a", 10)
    assert len(memory) == 2
    assert memory.get("a") == 10
    memory.put("c", 3)  # the put used "a" again: "b" goes
    assert (memory.get("a"), memory.get("b"), memory.get("c")) == (10, None, 3)


def test_memory_missing_key_is_none_and_changes_nothing() -> None:
    memory: Memory[str, int] = Memory(size=2)
    memory.put("a", 1)
    assert memory.get("z") is None
    assert len(memory) == 1


# ----------------------------------------------------------------------------------------------------------
# Requests: the memo path against the full path.

# A head as lines, with the key line to be filled in: ``render(key)`` gives its bytes.
Render = Callable[[str], bytes]


@dataclass(frozen=True)
class HeadSpec:
    """A request head but for its key: the target and the field lines (name, OWS, value, OWS), and where
    (index), under which name and with which OWS the key line goes."""

    target: str
    lines: tuple[tuple[str, str, str, str], ...]
    key_at: int
    key_name: str
    key_ows: tuple[str, str]

    def render(self, key: str) -> bytes:
        lines = [f"{name}:{before}{value}{after}" for name, before, value, after in self.lines]
        lines.insert(self.key_at, f"{self.key_name}:{self.key_ows[0]}{key}{self.key_ows[1]}")
        return "\r\n".join([f"GET {self.target} HTTP/1.1", *lines, "", ""]).encode("latin-1")


_OWS = st.sampled_from(["", " ", " ", "  ", "\t", " \t "])
_TEXT = st.text(alphabet=st.sampled_from(list(" !#()-./0123456789:;=ABCMXYZabcxyz\xe9")), max_size=24)
# Keys as browsers send them (16 random bytes), and any value of the canonical form a client may send.
KEYS = st.one_of(
    st.binary(min_size=16, max_size=16).map(lambda data: base64.b64encode(data).decode("ascii")),
    st.from_regex(r"\A[A-Za-z0-9+/]{22}==\Z"),
)
# Anything a client may put in the key line instead: near misses of every kind, and keys.
KEY_LIKE = st.one_of(
    KEYS,
    st.binary(min_size=14, max_size=18).map(lambda data: base64.b64encode(data).decode("ascii")),
    st.from_regex(r"\A[A-Za-z0-9+/=_ \t-]{20,27}\Z"),
)


def _cased(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name, name.lower(), name.upper()])


@st.composite
def head_specs(draw: st.DrawFn) -> HeadSpec:
    fields: list[tuple[str, str]] = []

    def add(name: str, value: str | None) -> None:
        if value is not None:
            fields.append((draw(_cased(name)), value))

    target = draw(st.sampled_from(["/ws", "/ws?kiosk=7", "/ws?", "/ws?a=1&b=%20&a=2", "/x/y?z"]))
    add(
        "Host",
        draw(st.sampled_from(["kiosk.example.org", "kiosk.example.org:8443", "[2001:db8::1]:9", None])),
    )
    add("Connection", draw(st.sampled_from(["Upgrade", "keep-alive, Upgrade", "upgrade"])))
    add("Upgrade", draw(st.sampled_from(["websocket", "WebSocket"])))
    add("Sec-WebSocket-Version", "13")
    add(
        "Origin",
        draw(st.sampled_from([ORIGIN] * 6 + ["https://a.example.net", FOREIGN_ORIGIN, "null", None])),
    )
    add("User-Agent", draw(st.one_of(st.sampled_from([USER_AGENT, KEY_1, "curl/8.5.0", None]), _TEXT)))
    for value in draw(
        st.lists(st.sampled_from(["chat", "v2.hub", "chat, v2.hub", "", " x , y"]), max_size=3)
    ):
        add("Sec-WebSocket-Protocol", value)
    for value in draw(
        st.lists(st.sampled_from(["permessage-deflate; client_max_window_bits", "x-ext", ""]), max_size=2)
    ):
        add("Sec-WebSocket-Extensions", value)
    for value in draw(st.lists(st.sampled_from(["a=1", "b=2; c=3", "session=s3cr3t", ""]), max_size=2)):
        add("Cookie", value)
    add("Authorization", draw(st.sampled_from([None, "Bearer client-chosen-token", "Basic dXNlcjpwdw=="])))
    for name, value in draw(
        st.lists(
            st.sampled_from(
                [
                    ("Pragma", "no-cache"),
                    ("Accept-Encoding", "gzip, deflate, br"),
                    ("X-Forwarded-For", "127.0.0.1"),
                    ("Forwarded", "for=10.0.0.1"),
                    ("token", "client-chosen"),
                    ("X-Note", KEY_2),
                ]
            ),
            max_size=3,
        )
    ):
        add(name, value)
    # Now and then a second key line: every such head is refused, with either key.
    add("Sec-WebSocket-Key", draw(st.sampled_from([None] * 18 + ["short", KEY_1])))
    order = draw(st.permutations(fields))
    return HeadSpec(
        target=target,
        lines=tuple((name, draw(_OWS), value, draw(_OWS)) for name, value in order),
        key_at=draw(st.integers(0, len(order))),
        key_name=draw(st.sampled_from(["Sec-WebSocket-Key", "sec-websocket-key", "SEC-WEBSOCKET-KEY"])),
        key_ows=(draw(_OWS), draw(_OWS)),
    )


ROUTES = st.builds(
    make_route,
    upstream=st.sampled_from([(UPSTREAM_1,), (UPSTREAM_1, UPSTREAM_2)]),
    headers=st.sampled_from(
        [
            {},
            {"token": SECRET},
            {"authorization": f"Bearer {SECRET}"},
            {"x-forwarded-for": "10.9.8.7", "x-api-key": SECRET},
            {"user-agent": "wsgate", "cookie": "internal=1"},
        ]
    ).map(secret_headers),
    change_origin=st.booleans(),
    pass_cookies=st.booleans(),
    pass_authorization=st.booleans(),
    forwarded=st.sampled_from(["x-forwarded", "rfc7239", "none"]),
)
PEERS = st.sampled_from([PEER, "2001:db8::7", "::ffff:192.0.2.1", "", "unix"])
POLICIES = st.sampled_from([ORIGINS, OriginPolicy([ORIGIN, "null"], allow_missing=True)])


def assert_memo_matches_full(
    render: Render,
    route: Route,
    k1: str,
    k2: str,
    *,
    peer: str = PEER,
    scheme: str = "https",
    origins: OriginPolicy = ORIGINS,
) -> bool:
    """The memo's property for one head: what the full path made of it with ``k1``, filled with ``k2``, is
    what the full path makes of it with ``k2``. Returns whether the full path accepted the head."""
    raw_1, raw_2 = render(k1), render(k2)
    refusal: Exception | None = None
    try:
        expected_1 = full_requests(raw_1, route, peer=peer, scheme=scheme, origins=origins)
    except (WsgateError, ValueError) as exc:
        refusal = exc
    if refusal is not None:
        # Refused: nothing is remembered. The key's value played no part in the refusal.
        with pytest.raises(type(refusal), match=f"^{re.escape(str(refusal))}$"):
            full_requests(raw_2, route, peer=peer, scheme=scheme, origins=origins)
        return False
    shape_1, shape_2 = request_shape(raw_1), request_shape(raw_2)
    assert shape_1 is not None
    assert shape_2 is not None
    assert shape_1[0] == shape_2[0]
    assert (shape_1[1], shape_2[1]) == (k1, k2)
    plan = UpgradePlan.of(*expected_1)
    assert plan is not None
    assert plan.fill(k1) == expected_1
    assert plan.fill(k2) == full_requests(raw_2, route, peer=peer, scheme=scheme, origins=origins)
    return True


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=head_specs(),
    route=ROUTES,
    k1=KEYS,
    k2=KEYS,
    peer=PEERS,
    scheme=st.sampled_from(["http", "https"]),
    origins=POLICIES,
)
@example(
    spec=HeadSpec("/ws", (("Origin", " ", ORIGIN, ""),), 0, "Sec-WebSocket-Key", ("", "")),
    route=make_route(),
    k1=KEY_1,
    k2="AAAAAAAAAAAAAAAAAAAAAB==",  # canonical in form, with bits set past the 16 bytes: still valid
    peer=PEER,
    scheme="https",
    origins=ORIGINS,
)
def test_a_plan_filled_with_another_key_is_what_the_full_path_builds_for_it(
    spec: HeadSpec, route: Route, k1: str, k2: str, peer: str, scheme: str, origins: OriginPolicy
) -> None:
    accepted = assert_memo_matches_full(spec.render, route, k1, k2, peer=peer, scheme=scheme, origins=origins)
    event("accepted" if accepted else "refused")


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(spec=head_specs(), route=ROUTES, k1=KEYS, value=KEY_LIKE, peer=PEERS)
@example(
    spec=HeadSpec("/ws", (("Origin", " ", ORIGIN, ""),), 0, "Sec-WebSocket-Key", (" ", "")),
    route=make_route(),
    k1=KEY_1,
    value=base64.b64encode(bytes(17)).decode("ascii"),
    peer=PEER,
)
def test_a_head_of_a_remembered_shape_is_answered_as_the_full_path_answers_it(
    spec: HeadSpec, route: Route, k1: str, value: str, peer: str
) -> None:
    """Whatever a client puts in its key line: if the head has the shape of one already accepted, the plan
    filled with the key that shape gives is what the full path makes of the head - the full path accepts it
    too. Otherwise the head is checked in full, and there is nothing to compare."""
    try:
        expected = full_requests(spec.render(k1), route, peer=peer)
    except (WsgateError, ValueError):
        reject()  # refused: nothing remembered
    remembered = request_shape(spec.render(k1))
    plan = UpgradePlan.of(*expected)
    assert remembered is not None
    assert plan is not None
    raw = spec.render(value)
    found = request_shape(raw)
    if found is None or found[0] != remembered[0]:
        event("another shape: checked in full")
        return
    event("the remembered shape")
    assert plan.fill(found[1]) == full_requests(raw, route, peer=peer)


def _explicit_head(**changes: Any) -> Render:
    return lambda key: browser_head(key, **changes)


@pytest.mark.parametrize(
    ("render", "route"),
    [
        (_explicit_head(), make_route()),
        (_explicit_head(), make_route(headers=secret_headers({"token": SECRET}), change_origin=True)),
        (
            _explicit_head(extra=["Sec-WebSocket-Protocol: chat", "sec-websocket-protocol:  v2.hub , x\t"]),
            make_route(upstream=(UPSTREAM_1, UPSTREAM_2), forwarded="rfc7239"),
        ),
        (
            _explicit_head(extra=["Cookie: a=1", "Cookie: b=2", "Authorization: Bearer client-token"]),
            make_route(pass_cookies=True, pass_authorization=True, forwarded="none"),
        ),
        (
            _explicit_head(key_line="SEC-WEBSOCKET-KEY:\t {key} \t", target="/ws?a=1&b=%20"),
            make_route(
                headers=secret_headers({"authorization": f"Bearer {SECRET}"}), pass_authorization=True
            ),
        ),
        (
            _explicit_head(user_agent=KEY_1, extra=[f"X-Note: {KEY_1}"]),  # the key's bytes elsewhere too
            make_route(headers=secret_headers({"x-forwarded-for": "10.0.0.1"})),
        ),
        (
            _explicit_head(origin="https://a.example.net", extra=["Sec-WebSocket-Extensions: x-ext"]),
            make_route(upstream=(UPSTREAM_2, UPSTREAM_1), change_origin=True, forwarded="x-forwarded"),
        ),
    ],
)
def test_a_plan_filled_with_another_key_is_what_the_full_path_builds_for_it_explicit_cases(
    render: Render, route: Route
) -> None:
    assert assert_memo_matches_full(render, route, KEY_1, KEY_2)
    assert assert_memo_matches_full(render, route, KEY_2, KEY_1)


# ----------------------------------------------------------------------------------------------------------
# Responses: the memo path against the full path.


@dataclass(frozen=True)
class SwitchingSpec:
    """A 101 head but for its accept: status line, field lines (name, OWS, value, OWS) and where, under which
    name and with which OWS the accept line goes; then the bytes that follow it."""

    status_line: str
    lines: tuple[tuple[str, str, str, str], ...]
    accept_at: int
    accept_name: str
    accept_ows: tuple[str, str]
    after: bytes

    def render(self, accept: str) -> bytes:
        lines = [f"{name}:{before}{value}{after}" for name, before, value, after in self.lines]
        lines.insert(self.accept_at, f"{self.accept_name}:{self.accept_ows[0]}{accept}{self.accept_ows[1]}")
        return "\r\n".join([self.status_line, *lines, "", ""]).encode("latin-1") + self.after


PROTOCOL_OFFERS = st.sampled_from([(), ("chat",), ("chat", "v2.hub"), ("v2.hub", "Chat")])


@st.composite
def switching_specs(draw: st.DrawFn) -> SwitchingSpec:
    fields: list[tuple[str, str]] = []

    def add(name: str, value: str | None) -> None:
        if value is not None:
            fields.append((draw(_cased(name)), value))

    status_line = draw(
        st.sampled_from(
            [
                *["HTTP/1.1 101 Switching Protocols"] * 5,
                "HTTP/1.1 101",
                "HTTP/1.1 101 Web Socket Protocol Handshake",
                "HTTP/1.0 101 Switching Protocols",
            ]
        )
    )
    add("Upgrade", draw(st.sampled_from(["websocket", "websocket", "WebSocket"])))
    add("Connection", draw(st.sampled_from(["Upgrade", "upgrade", "Upgrade, keep-alive"])))
    add("Sec-WebSocket-Protocol", draw(st.sampled_from([None] * 4 + ["chat", "v2.hub", "other"])))
    extensions = st.sampled_from(["permessage-deflate", "permessage-deflate; server_no_context_takeover", ""])
    for value in draw(st.lists(extensions, max_size=draw(st.sampled_from([0, 0, 1, 2])))):
        add("Sec-WebSocket-Extensions", value)
    add("Server", draw(st.sampled_from([None, "hub/1.0", "nginx"])))
    for value in draw(st.lists(st.sampled_from(["sid=1; HttpOnly", "tracking=2"]), max_size=2)):
        add("Set-Cookie", value)
    add("Date", draw(st.sampled_from([None, "Tue, 03 Nov 2026 10:00:00 GMT"])))
    order = draw(st.permutations(fields))
    return SwitchingSpec(
        status_line=status_line,
        lines=tuple((name, draw(_OWS), value, draw(_OWS)) for name, value in order),
        accept_at=draw(st.integers(0, len(order))),
        accept_name=draw(
            st.sampled_from(["Sec-WebSocket-Accept", "sec-websocket-accept", "SEC-WEBSOCKET-ACCEPT"])
        ),
        accept_ows=(draw(_OWS), draw(_OWS)),
        after=draw(st.sampled_from([b"", FRAME, b"\x88\x02\x03\xe8", b"\x81\x04\r\n\r\n" + FRAME])),
    )


def assert_answers_match_full(spec: SwitchingSpec, offer_1: WebSocketOffer, k2: str) -> bool:
    """The memo's property for one 101: remembered after the full path passed it for ``offer_1``, it is
    recalled for the same head answering ``k2`` exactly as the full path answers, and never with a wrong
    accept or for another offer. Returns whether the full path passed it."""
    offer_2 = replace(offer_1, key=k2)
    data_1, data_2 = spec.render(accept_key(offer_1.key)), spec.render(accept_key(k2))
    answers = Answers()
    seen = answers.recall(data_1, offer_1)
    assert isinstance(seen, Unrecalled)
    try:
        response_1, leftover_1 = full_answer(data_1, offer_1)
    except UpstreamProtocolError:
        # Failed: nothing is remembered, and the same head answering k2 fails alike.
        with pytest.raises(UpstreamProtocolError):
            full_answer(data_2, offer_2)
        assert isinstance(answers.recall(data_2, offer_2), Unrecalled)
        return False
    assert leftover_1 == spec.after
    answers.remember(seen, response_1)
    assert len(answers) == 1

    response_2, leftover_2 = full_answer(data_2, offer_2)
    assert answers.recall(data_2, offer_2) == Switched(response_2, leftover_2)
    assert answers.recall(data_1, offer_1) == Switched(response_1, leftover_1)
    if k2 != offer_1.key:
        # The accept for the other key: the full path fails it, so must the memo.
        with pytest.raises(UpstreamProtocolError):
            full_answer(data_1, offer_2)
        assert isinstance(answers.recall(data_1, offer_2), Unrecalled)
        assert isinstance(answers.recall(data_2, offer_1), Unrecalled)
    # What the client offered is part of what an answer is remembered by.
    for other in (
        replace(offer_2, protocols=(*offer_2.protocols, "other")),
        replace(offer_2, protocols=offer_2.protocols[:-1]) if offer_2.protocols else None,
        replace(offer_2, extensions=not offer_2.extensions),
    ):
        if other is not None:
            assert isinstance(answers.recall(data_2, other), Unrecalled)
    return True


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(spec=switching_specs(), k1=KEYS, k2=KEYS, protocols=PROTOCOL_OFFERS, extensions=st.booleans())
def test_a_remembered_101_is_recalled_for_another_key_as_the_full_path_answers_it(
    spec: SwitchingSpec, k1: str, k2: str, protocols: tuple[str, ...], extensions: bool
) -> None:
    passed = assert_answers_match_full(spec, WebSocketOffer(k1, protocols, extensions), k2)
    event("passed" if passed else "failed")


@pytest.mark.parametrize(
    ("spec", "offer"),
    [
        (
            SwitchingSpec(
                "HTTP/1.1 101 Switching Protocols",
                (("Upgrade", " ", "websocket", ""), ("Connection", " ", "Upgrade", "")),
                2,
                "Sec-WebSocket-Accept",
                (" ", ""),
                b"",
            ),
            WebSocketOffer(KEY_1, (), extensions=False),
        ),
        (
            SwitchingSpec(
                "HTTP/1.1 101",
                (
                    ("server", " ", "hub/1.0", ""),
                    ("connection", "\t", "upgrade", " "),
                    ("UPGRADE", "", "WebSocket", ""),
                    ("Sec-WebSocket-Protocol", " ", "v2.hub", " "),
                    ("Sec-WebSocket-Extensions", " ", "permessage-deflate", ""),
                    ("Sec-WebSocket-Extensions", " ", "server_no_context_takeover", ""),
                    ("Set-Cookie", " ", "sid=1", ""),
                ),
                1,
                "sec-websocket-accept",
                ("\t", "  "),
                FRAME,
            ),
            WebSocketOffer(KEY_1, ("chat", "v2.hub"), extensions=True),
        ),
    ],
)
def test_a_remembered_101_is_recalled_for_another_key_explicit_cases(
    spec: SwitchingSpec, offer: WebSocketOffer
) -> None:
    assert assert_answers_match_full(spec, offer, KEY_2)


def test_an_answer_not_remembered_is_never_recalled() -> None:
    answers = Answers()
    data = switching_head(accept_key(KEY_1)) + FRAME
    offer = WebSocketOffer(KEY_1, (), extensions=False)
    assert isinstance(answers.recall(data, offer), Unrecalled)
    assert isinstance(answers.recall(data, offer), Unrecalled)
    assert len(answers) == 0


def test_an_answer_without_a_whole_head_or_a_canonical_accept_cannot_be_remembered() -> None:
    answers = Answers()
    offer = WebSocketOffer(KEY_1, (), extensions=False)
    head = switching_head(accept_key(KEY_1))
    assert answers.recall(head[:-1], offer) is None
    assert answers.recall(switching_head(accept_key(KEY_1)[:-1]), offer) is None


def test_answers_hold_at_most_size_entries() -> None:
    answers = Answers(size=2)
    offer = WebSocketOffer(KEY_1, (), extensions=False)
    for server in ("a", "b", "c"):
        data = switching_head(
            accept_key(KEY_1), accept_line=f"Server: {server}\r\nSec-WebSocket-Accept: {{accept}}"
        )
        seen = answers.recall(data, offer)
        assert isinstance(seen, Unrecalled)
        answers.remember(seen, full_answer(data, offer)[0])
    assert len(answers) == 2


# ----------------------------------------------------------------------------------------------------------
# Origin


def test_a_head_with_a_foreign_origin_has_another_shape_and_is_refused_in_full() -> None:
    """A plan remembered for an allowed Origin is never found for a foreign one: the Origin is in the shape,
    so the foreign head goes through the Origin check."""
    route = make_route()
    allowed, foreign = browser_head(KEY_1), browser_head(KEY_2, origin=FOREIGN_ORIGIN)
    found_allowed, found_foreign = request_shape(allowed), request_shape(foreign)
    assert found_allowed is not None
    assert found_foreign is not None
    assert found_allowed[0] != found_foreign[0]
    plans: Memory[tuple[str, Shape], UpgradePlan] = Memory()
    plan = UpgradePlan.of(*full_requests(allowed, route))
    assert plan is not None
    plans.put((PEER, found_allowed[0]), plan)
    assert plans.get((PEER, found_foreign[0])) is None
    with pytest.raises(ForbiddenError):
        full_requests(foreign, route)
