"""Origin normalisation, allowlist entries and the policy a handshake is checked against."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.auth.origins import MAX_ORIGIN_LENGTH, OriginPattern, OriginPolicy, normalize_origin
from wsgate.errors import ForbiddenError

LEGIT = "https://kiosk.example.org"


# --- normalize_origin: accepted spellings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://kiosk.example.org", "https://kiosk.example.org"),
        # RFC 6454 §4: scheme and host compare case-insensitively.
        ("HTTPS://KIOSK.Example.ORG", "https://kiosk.example.org"),
        ("https://KIOSK.Example.ORG", "https://kiosk.example.org"),
        # Trailing dot: the same host.
        ("https://kiosk.example.org.", "https://kiosk.example.org"),
        ("https://kiosk.example.org.:8443", "https://kiosk.example.org:8443"),
        # Default ports dropped, others kept.
        ("https://kiosk.example.org:443", "https://kiosk.example.org"),
        ("http://kiosk.example.org:80", "http://kiosk.example.org"),
        ("ws://kiosk.example.org:80", "ws://kiosk.example.org"),
        ("wss://kiosk.example.org:443", "wss://kiosk.example.org"),
        ("http://kiosk.example.org:443", "http://kiosk.example.org:443"),
        ("https://kiosk.example.org:80", "https://kiosk.example.org:80"),
        ("https://kiosk.example.org:8443", "https://kiosk.example.org:8443"),
        ("https://kiosk.example.org:1", "https://kiosk.example.org:1"),
        ("https://kiosk.example.org:65535", "https://kiosk.example.org:65535"),
        ("https://kiosk.example.org:0443", "https://kiosk.example.org"),
        ("http://localhost:8000", "http://localhost:8000"),
        ("http://localhost", "http://localhost"),
        # Other schemes (Electron apps, extensions) are syntactically fine; they have no default port.
        ("app://kiosk", "app://kiosk"),
        ("chrome-extension://abcdefghijklmnop", "chrome-extension://abcdefghijklmnop"),
        ("custom+scheme.v1://host:80", "custom+scheme.v1://host:80"),
        # IDNA: Unicode hosts become the punycode browsers send; punycode is left alone.
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("https://BÜCHER.example", "https://xn--bcher-kva.example"),
        ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ("https://XN--BCHER-KVA.example", "https://xn--bcher-kva.example"),
        ("https://例え.jp", "https://xn--r8jz45g.jp"),
        ("https://bücher.example。", "https://xn--bcher-kva.example"),  # ideographic full stop
        ("https://ＫＩＯＳＫ.example.org", "https://kiosk.example.org"),  # fullwidth letters (NFKC)
        # Underscores and hyphens.
        ("https://my_host.example.org", "https://my_host.example.org"),
        ("https://a-b.example.org", "https://a-b.example.org"),
        # IPv4.
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://10.0.0.1", "http://10.0.0.1"),
        # IPv6: brackets kept, compressed lower case (RFC 5952).
        ("http://[::1]:8000", "http://[::1]:8000"),
        ("http://[::1]", "http://[::1]"),
        ("https://[::1]:443", "https://[::1]"),
        ("http://[0:0:0:0:0:0:0:1]", "http://[::1]"),
        ("http://[2001:DB8::A]", "http://[2001:db8::a]"),
        ("http://[2001:db8:0:0:1:0:0:1]:9000", "http://[2001:db8::1:0:0:1]:9000"),
        ("null", "null"),
    ],
)
def test_normalize_accepts(value: str, expected: str) -> None:
    assert normalize_origin(value) == expected


# --- normalize_origin: rejected input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "",
        "kiosk.example.org",  # no scheme
        "//kiosk.example.org",
        "https:/kiosk.example.org",
        "https:kiosk.example.org",
        "1https://kiosk.example.org",  # scheme must start with a letter
        "ht tp://kiosk.example.org",
        "ht_tp://kiosk.example.org",
        "https://",  # empty host
        "https://:443",
        "https://.",
        "https://..",
        "https://kiosk.example.org..",
        "https://.kiosk.example.org",
        "https://kiosk..example.org",
        # path, query, fragment - not even "/".
        "https://kiosk.example.org/",
        "https://kiosk.example.org/path",
        "https://kiosk.example.org?",
        "https://kiosk.example.org?q=1",
        "https://kiosk.example.org#",
        "https://kiosk.example.org#frag",
        "https://kiosk.example.org\\evil",
        # userinfo.
        "https://kiosk.example.org@evil.com",
        "https://user@kiosk.example.org",
        "https://user:pw@kiosk.example.org",
        "https://@kiosk.example.org",
        # whitespace and control characters anywhere.
        " https://kiosk.example.org",
        "https://kiosk.example.org ",
        "https://kiosk.example.org\t",
        "https://kiosk.example.org\r\n",
        "https://kiosk.example.org\n",
        "https://kiosk .example.org",
        "https://kiosk.example.org\x00",
        "https://kiosk.example.org\x7f",
        "https://kiosk.example.org\u00a0",  # no-break space
        "https://kiosk.example.org\u2028",  # line separator
        "https://kiosk\u200b.example.org",  # zero-width space (format character)
        "https://kiosk\u00ad.example.org",  # soft hyphen
        "https://kiosk.example.org\u202e",  # right-to-left override
        "https://kiosk.example.org\ud800",  # lone surrogate
        "https://kiosk.example.org\ue000",  # private use
        # ports.
        "https://kiosk.example.org:",
        "https://kiosk.example.org:0",
        "https://kiosk.example.org:65536",
        "https://kiosk.example.org:99999",
        "https://kiosk.example.org:000443",
        "https://kiosk.example.org:-1",
        "https://kiosk.example.org:+443",
        "https://kiosk.example.org:44a",
        "https://kiosk.example.org:https",
        "https://kiosk.example.org:٤٤٣",  # Arabic-Indic digits: isdigit() but not a port
        "https://kiosk.example.org:443:443",
        # host characters.
        "https://kiosk.exa%6dple.org",
        "https://kiosk.example.org$",
        "https://kiosk*.example.org",
        "https://*.example.org",  # a wildcard is a pattern, not an origin
        "https://evil.com／.example.org",  # fullwidth solidus: nameprep turns it into "/"
        "https://evil.com＠kiosk.example.org",  # fullwidth commercial at
        "https://evil.com：443",  # fullwidth colon
        "https://" + "a" * 64 + ".example.org",  # label over 63
        "https://" + ".".join(["a" * 60] * 5),  # host over 253
        # deviation characters: IDNA 2003 and browsers disagree.
        "https://straße.de",
        "https://ς.example",
        # numbers: must be a real dotted quad.
        "http://1.2.3",
        "http://1.2.3.4.5",
        "http://256.0.0.1",
        "http://01.2.3.4",
        "http://0x7f.0.0.1",
        "http://2130706433",
        "http://example.123",
        # IPv6.
        "http://::1",
        "http://[::1",
        "http://::1]",
        "http://[]",
        "http://[::g]",
        "http://[::1]x",
        "http://[::1]:",
        "http://[::1]:0",
        "http://[fe80::1%25eth0]",
        "http://[fe80::1%eth0]",
        "http://[1:2:3:4:5:6:7:8:9]",
        "http://[[::1]]",
        "http://a[b]",
        # nonsense.
        "NULL",
        "Null",
        "null ",
        "*",
        "https",
        "://kiosk.example.org",
    ],
)
def test_normalize_rejects(value: str) -> None:
    with pytest.raises(ValueError, match=r".") as info:
        normalize_origin(value)
    # The message never repeats the value (it may be sent to the peer), beyond what the fixed hint says.
    hint = "write an origin as scheme://host[:port], e.g. https://kiosk.example.org"
    if len(value) > 3 and value not in hint:
        assert value not in str(info.value)


def test_normalize_rejects_overlong() -> None:
    value = "https://" + "a" * (MAX_ORIGIN_LENGTH - len("https://") + 1)
    assert len(value) == MAX_ORIGIN_LENGTH + 1
    with pytest.raises(ValueError, match="longer than"):
        normalize_origin(value)
    # At the limit the length check does not fire; the host is then refused for its own reasons.
    with pytest.raises(ValueError, match="host"):
        normalize_origin(value[:-1])


def test_normalize_message_has_no_value() -> None:
    secretish = "https://kiosk.example.org/SECRET-PATH"
    with pytest.raises(ValueError, match="path") as info:
        normalize_origin(secretish)
    assert "SECRET" not in str(info.value)


@given(st.text(max_size=200))
def test_normalize_only_raises_value_error_and_is_idempotent(value: str) -> None:
    try:
        normalized = normalize_origin(value)
    except ValueError:
        return
    assert normalize_origin(normalized) == normalized
    assert normalized.isascii()


_host_label = st.from_regex(r"[A-Za-z0-9_\-]{1,20}", fullmatch=True)


@given(
    scheme=st.sampled_from(["http", "https", "ws", "wss", "HTTP", "Wss", "app"]),
    labels=st.lists(_host_label, min_size=1, max_size=4),
    port=st.none() | st.integers(min_value=1, max_value=65535),
    trailing_dot=st.booleans(),
)
def test_normalize_well_formed_origins(
    scheme: str, labels: list[str], port: int | None, trailing_dot: bool
) -> None:
    host = ".".join(labels) + ("." if trailing_dot else "")
    value = f"{scheme}://{host}" + ("" if port is None else f":{port}")
    try:
        normalized = normalize_origin(value)
    except ValueError:
        # Only hosts that end in a number (must then be IPv4) may fail here.
        assert labels[-1].isdigit() or labels[-1].lower().startswith("0x")
        return
    assert normalized == normalize_origin(normalized)
    assert normalized.startswith(scheme.lower() + "://")
    assert normalized == normalized.lower()


@given(st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40))
def test_normalize_unicode_hosts(host: str) -> None:
    try:
        normalized = normalize_origin(f"https://{host}")
    except ValueError:
        return
    assert normalized.isascii()
    assert normalize_origin(normalized) == normalized


# --- OriginPattern ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "canonical"),
    [
        ("https://kiosk.example.org", "exact", "https://kiosk.example.org"),
        ("HTTPS://Kiosk.Example.org:443", "exact", "https://kiosk.example.org"),
        ("http://localhost:8000", "exact", "http://localhost:8000"),
        ("https://bücher.example", "exact", "https://xn--bcher-kva.example"),
        ("http://[::1]:8000", "exact", "http://[::1]:8000"),
        ("https://*.example.org", "wildcard", "https://*.example.org"),
        ("HTTPS://*.EXAMPLE.org.", "wildcard", "https://*.example.org"),
        ("https://*.example.org:443", "wildcard", "https://*.example.org"),
        ("https://*.example.org:8443", "wildcard", "https://*.example.org:8443"),
        ("https://*.bücher.example", "wildcard", "https://*.xn--bcher-kva.example"),
        ("https://*.co.example", "wildcard", "https://*.co.example"),
        ("null", "null", "null"),
    ],
)
def test_pattern_parse(text: str, kind: str, canonical: str) -> None:
    pattern = OriginPattern.parse(text)
    assert pattern.kind == kind
    assert pattern.text == canonical
    assert str(pattern) == canonical


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("*", "every web site"),
        (" * ", "every web site"),
        ("https://*", "first label|domain"),
        ("https://*.", "domain|empty host"),
        ("https://*.:443", "domain"),
        ("*.example.org", "scheme"),
        ("https://*example.org", "first label"),
        ("https://a.*.example.org", "first label"),
        ("https://*.*.example.org", "first label"),
        ("https://*.example.*", "first label"),
        ("https://kiosk.*", "first label"),
        ("https://**.example.org", "first label"),
        ("https://*.org", "top-level"),
        ("https://*.localhost", "top-level"),
        ("https://*.10.0.0.1", "IP address"),
        ("https://*.0.1", "IPv4"),
        ("https://*.[::1]", "IP address|bracket"),
        ("https://*.example.org/", "path"),
        ("https://*.example.org/app", "path"),
        ("https://kiosk.example.org/", "path"),
        ("https://kiosk.example.org/path", "path"),
        ("https://kiosk.example.org?x", "query"),
        ("https://user@kiosk.example.org", "user info"),
        (" https://kiosk.example.org", "whitespace"),
        ("kiosk.example.org", "scheme"),
        ("https://kiosk.example.org:99999", "port"),
        ("NULL", "scheme"),
        ("", "scheme"),
    ],
)
def test_pattern_parse_rejects_with_actionable_message(text: str, hint: str) -> None:
    with pytest.raises(ValueError, match=hint):
        OriginPattern.parse(text)


def test_exact_pattern_matches_only_itself() -> None:
    pattern = OriginPattern.parse(LEGIT)
    assert pattern.matches("https://kiosk.example.org")
    assert not pattern.matches("https://a.kiosk.example.org")
    assert not pattern.matches("http://kiosk.example.org")
    assert not pattern.matches("null")


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://a.example.org", True),
        ("https://kiosk.example.org", True),
        ("https://a.b.example.org", True),  # any depth
        ("https://a.b.c.d.example.org", True),
        ("https://example.org", False),  # not the domain itself
        ("https://evil-example.org", False),
        ("https://aexample.org", False),
        ("https://a.example.org.evil.com", False),
        ("https://example.org.evil.com", False),
        ("https://a.example.com", False),
        ("http://a.example.org", False),  # other scheme
        ("wss://a.example.org", False),
        ("https://a.example.org:8443", False),  # other port
        ("https://.example.org", False),  # not normalised; defensive
        ("https://a..example.org", False),
        ("https://a:1.example.org", False),
        ("https://a/.example.org", False),
        ("null", False),
    ],
)
def test_wildcard_pattern_matches(origin: str, expected: bool) -> None:
    assert OriginPattern.parse("https://*.example.org").matches(origin) is expected


def test_wildcard_with_port() -> None:
    pattern = OriginPattern.parse("https://*.example.org:8443")
    assert pattern.matches("https://a.example.org:8443")
    assert not pattern.matches("https://a.example.org")
    assert not pattern.matches("https://a.example.org:9443")
    assert not pattern.matches("https://example.org:8443")


def test_null_pattern() -> None:
    pattern = OriginPattern.parse("null")
    assert pattern.matches("null")
    assert not pattern.matches(LEGIT)


def test_pattern_is_frozen() -> None:
    pattern = OriginPattern.parse(LEGIT)
    with pytest.raises(AttributeError):
        pattern.text = "https://evil.com"  # type: ignore[misc]


# --- OriginPolicy -------------------------------------------------------------------------------------------


@pytest.fixture
def policy() -> OriginPolicy:
    return OriginPolicy([LEGIT], allow_missing=False)


@pytest.mark.parametrize(
    "origin",
    [
        "https://kiosk.example.org.evil.com",
        "https://evil-kiosk.example.org",
        "https://evilkiosk.example.org",
        "https://a.kiosk.example.org",
        "https://example.org",
        "http://kiosk.example.org",
        "wss://kiosk.example.org",
        "ws://kiosk.example.org",
        "https://kiosk.example.org:8443",
        "https://kiosk.example.org:80",
        "null",
        "https://kiosk.example.org@evil.com",
        "https://evil.com@kiosk.example.org",
        "https://kiosk.example.org/path",
        "https://kiosk.example.org/",
        "https://kiosk.example.org?",
        "https://kiosk.example.org#",
        " https://kiosk.example.org",
        "https://kiosk.example.org ",
        "https://kiosk.example.org\r\nX-Evil: 1",
        "https://kiosk.example.org\x00",
        "https://kiosk.example.org..",
        "https://kiosk.example.org.evil.com:443",
        "https://kiosk%2eexample.org",
        "https://kіosk.example.org",  # Cyrillic і: a homograph, not the same domain
        "https://ｋｉｏｓｋ.example.org",  # Unicode in a header: browsers send ASCII only
        "",
        "*",
        "https://*.example.org",
        "https://" + "a." * 600 + "org",
    ],
)
def test_policy_rejects_look_alikes(policy: OriginPolicy, origin: str) -> None:
    assert not policy.allows(origin)
    with pytest.raises(ForbiddenError) as info:
        policy.check(origin)
    assert info.value.status == 403
    assert info.value.reason == "origin"
    # The attacker-controlled value is never echoed into a response.
    if origin not in ("", "null", "*"):
        assert origin not in info.value.message
        assert origin.strip() not in info.value.message
    assert "evil" not in info.value.message


@pytest.mark.parametrize(
    "origin",
    [
        "https://kiosk.example.org",
        "https://KIOSK.Example.ORG",
        "HTTPS://kiosk.example.org",
        "https://kiosk.example.org.",
        "https://kiosk.example.org:443",
        "https://kiosk.example.org.:443",
    ],
)
def test_policy_accepts(policy: OriginPolicy, origin: str) -> None:
    policy.check(origin)
    assert policy.allows(origin)


def test_policy_not_allowed_message_is_actionable(policy: OriginPolicy) -> None:
    with pytest.raises(ForbiddenError, match="add it to allowed_origins"):
        policy.check("https://evil.com")
    gateway = OriginPolicy([LEGIT], allow_missing=False, config_key="public_origins")
    with pytest.raises(ForbiddenError, match="add it to public_origins"):
        gateway.check("https://evil.com")


def test_policy_malformed_message(policy: OriginPolicy) -> None:
    with pytest.raises(ForbiddenError, match="malformed") as info:
        policy.check("https://kiosk.example.org/<script>")
    assert "<script>" not in info.value.message


def test_policy_missing_origin() -> None:
    strict = OriginPolicy([LEGIT], allow_missing=False)
    with pytest.raises(ForbiddenError, match="allow_missing_origin") as info:
        strict.check(None)
    assert info.value.reason == "origin"
    assert not strict.allows(None)
    lenient = OriginPolicy([LEGIT], allow_missing=True)
    lenient.check(None)
    assert lenient.allows(None)
    assert lenient.allow_missing
    # Allowing a missing Origin does not admit a present but foreign one.
    assert not lenient.allows("https://evil.com")
    assert not lenient.allows("")


def test_policy_null_only_when_listed() -> None:
    without = OriginPolicy([LEGIT], allow_missing=True)
    with pytest.raises(ForbiddenError, match='add "null"'):
        without.check("null")
    with_null = OriginPolicy([LEGIT, "null"], allow_missing=False)
    assert with_null.allows("null")
    assert not with_null.allows("NULL")
    assert not with_null.allows("null ")
    # "null" being allowed does not open anything else.
    assert not with_null.allows("https://evil.com")


def test_policy_empty_allows_nothing() -> None:
    empty = OriginPolicy([], allow_missing=False)
    for origin in (LEGIT, "null", "http://localhost:8000", None):
        assert not empty.allows(origin)


def test_policy_unicode_entry_matches_punycode() -> None:
    policy = OriginPolicy(["https://bücher.example", "https://*.例え.jp"], allow_missing=False)
    assert policy.allows("https://xn--bcher-kva.example")
    assert policy.allows("https://XN--BCHER-KVA.EXAMPLE")
    assert policy.allows("https://shop.xn--r8jz45g.jp")
    assert not policy.allows("https://xn--r8jz45g.jp")
    assert not policy.allows("https://bucher.example")


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://a.example.org", True),
        ("https://A.Example.ORG.", True),
        ("https://a.b.c.example.org", True),
        ("https://a.example.org:443", True),
        ("https://example.org", False),
        ("https://evil-example.org", False),
        ("https://a.example.org.evil.com", False),
        ("http://a.example.org", False),
        ("https://a.example.org:8443", False),
        ("https://a.other.org", False),
        ("https://a.example.net:8443", True),
        ("https://a.b.example.net:8443", True),
        ("https://a.example.net", False),
        ("https://example.net:8443", False),
        ("http://127.0.0.1", False),
        ("http://[::1]", False),
        ("https://localhost", False),
    ],
)
def test_policy_wildcards(origin: str, expected: bool) -> None:
    policy = OriginPolicy(["https://*.example.org", "https://*.example.net:8443"], allow_missing=False)
    assert policy.allows(origin) is expected


def test_policy_ipv6_and_localhost() -> None:
    policy = OriginPolicy(
        ["http://[::1]:8000", "http://localhost:8000", "http://127.0.0.1:8000"], allow_missing=False
    )
    assert policy.allows("http://[0:0:0:0:0:0:0:1]:8000")
    assert policy.allows("http://[::1]:8000")
    assert not policy.allows("http://[::1]")
    assert not policy.allows("http://[::2]:8000")
    assert policy.allows("http://LOCALHOST:8000")
    assert not policy.allows("http://localhost:8001")
    assert policy.allows("http://127.0.0.1:8000")
    assert not policy.allows("http://127.0.0.2:8000")


@pytest.mark.parametrize("entry", ["*", "https://*", "https://kiosk.example.org/", "https://*.com", ""])
def test_policy_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        OriginPolicy([LEGIT, entry], allow_missing=False)


def test_policy_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError):
        OriginPolicy(LEGIT, allow_missing=False)


def test_policy_repr_and_patterns() -> None:
    policy = OriginPolicy(["HTTPS://Kiosk.Example.org", "https://*.example.org", "null"], allow_missing=True)
    assert [p.text for p in policy.patterns] == ["https://kiosk.example.org", "https://*.example.org", "null"]
    assert "https://*.example.org" in repr(policy)


@given(
    labels=st.lists(st.from_regex(r"[a-z0-9\-]{1,8}", fullmatch=True), min_size=1, max_size=4),
    base=st.sampled_from(["example.org", "b.example.org", "example.net", "evil.com"]),
    scheme=st.sampled_from(["https", "http"]),
    port=st.sampled_from(["", ":443", ":8443"]),
)
def test_policy_wildcard_lookup_agrees_with_pattern(
    labels: list[str], base: str, scheme: str, port: str
) -> None:
    entries = ["https://*.example.org", "https://*.example.net:8443"]
    policy = OriginPolicy(entries, allow_missing=False)
    patterns = [OriginPattern.parse(e) for e in entries]
    origin = f"{scheme}://{'.'.join(labels)}.{base}{port}"
    try:
        normalized = normalize_origin(origin)
    except ValueError:
        assert not policy.allows(origin)
        return
    assert policy.allows(origin) is any(p.matches(normalized) for p in patterns)


@given(st.text(max_size=100))
def test_policy_only_raises_forbidden(origin: str) -> None:
    policy = OriginPolicy([LEGIT, "https://*.example.org"], allow_missing=False)
    if policy.allows(origin):
        normalized = normalize_origin(origin)
        assert normalized == LEGIT or normalized.endswith(".example.org")
    else:
        with pytest.raises(ForbiddenError) as info:
            policy.check(origin)
        assert info.value.reason == "origin"
