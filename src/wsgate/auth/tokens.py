"""Credentials: where they are read from a request, how they verify, and what they grant.

Three kinds of credential yield a :class:`Grant`:

- **static** tokens from the configuration (``[[hub.tokens]]``), compared in constant time;
- **signed** tokens: JWT (RFC 7519) with HS256 only, the header's ``kid`` selecting one of several keys so
  keys can rotate; ``sub`` and ``exp`` required, ``nbf`` honoured, ``aud`` checked when configured, at most
  1 s of clock skew (DESIGN §3). :func:`mint_token` makes them;
- **publish API** tokens (``[hub.publish_api]``), accepted by :class:`PublishCredentials` for the HTTP API.

Every refusal is a :class:`~wsgate.errors.CredentialError` (401) or, for a right the credential lacks,
a :class:`~wsgate.errors.ForbiddenError` (403). Their ``reason`` is a metric label - ``missing``,
``malformed``, ``bad_token``, ``expired``, ``not_yet_valid``, ``bad_audience``, ``unknown_kid``, ``channel`` -
and their message tells the client what to do without ever containing the token, a key or a claim value.

Nothing here does I/O; time comes from the ``now`` argument (unix seconds), so tests need no clock.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt
from jwt.types import Options

from wsgate.errors import CredentialError, ForbiddenError
from wsgate.secret import Secret

__all__ = [
    "MAX_LEEWAY",
    "MAX_TOKEN_LENGTH",
    "MIN_KEY_BYTES",
    "SIGNING_ALGORITHM",
    "Grant",
    "GrantKind",
    "PublishCredentials",
    "StaticTokenLike",
    "TokenVerifier",
    "channel_matches",
    "credential_from_headers",
    "mint_token",
]

SIGNING_ALGORITHM = "HS256"
# RFC 7518 §3.2: an HS256 key MUST be at least as long as the hash output, 256 bits.
MIN_KEY_BYTES = 32
# DESIGN §3: exp/nbf tolerate at most 1 s of clock skew between minter and hub.
MAX_LEEWAY = 1.0
# aiohttp refuses header lines over 8190 bytes, so no honest credential is longer; the bound keeps an
# attacker from making us base64- and JSON-decode a large blob before the signature check.
MAX_TOKEN_LENGTH = 8192

GrantKind = Literal["static", "signed", "publish_api"]

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token;
#                b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
# The scheme is case-insensitive (RFC 9110 §11.1). re.ASCII keeps IGNORECASE from folding "K" (KELVIN SIGN)
# and friends onto ASCII letters.
_BEARER_RE = re.compile(r"(?i:bearer) +([A-Za-z0-9\-._~+/]+=*)", re.ASCII)
# RFC 7515 §7.1 compact serialisation: three base64url parts (no padding, §2), the signature non-empty -
# an "alg": "none" token with an empty signature is not even considered.
_JWT_RE = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+", re.ASCII)

_MISSING = "no credential; send a token in the configured auth header"
_MALFORMED_TOKEN = "credential malformed; a token is printable ASCII of at most 8192 characters"  # noqa: S105
_NOT_RECOGNISED = "credential not recognised; use a configured token or mint a new signed token"
_BAD_SIGNED = "signed token invalid; mint a new one with `wsgate token`"


def channel_matches(pattern: str, channel: str) -> bool:
    """Whether a channel pattern from a grant covers ``channel``.

    A pattern is an exact channel name, or ends in ``*`` to cover every channel with that prefix
    (``"kiosk:*"`` covers ``"kiosk:7"``; ``"*"`` covers all). A ``*`` anywhere else is an ordinary character.
    """
    if pattern.endswith("*"):
        return channel.startswith(pattern[:-1])
    return pattern == channel


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified credential may do.

    ``subject`` names the holder (a static token's name, a signed token's ``sub``, or ``"publish-api"``);
    ``subscribe``/``publish`` are channel patterns (see :func:`channel_matches`); ``expires_at`` is the unix
    time after which a connection opened with it should be closed with 1008 (``None``: never); ``kind`` says
    which kind of credential it came from.
    """

    subject: str
    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    expires_at: float | None
    kind: GrantKind

    def can_subscribe(self, channel: str) -> bool:
        return any(channel_matches(pattern, channel) for pattern in self.subscribe)

    def can_publish(self, channel: str) -> bool:
        return any(channel_matches(pattern, channel) for pattern in self.publish)


class StaticTokenLike(Protocol):
    """A configured static token (``wsgate.config.StaticToken`` has exactly these fields)."""

    @property
    def name(self) -> str: ...
    @property
    def token(self) -> Secret: ...
    @property
    def subscribe(self) -> tuple[str, ...]: ...
    @property
    def publish(self) -> tuple[str, ...]: ...


def _get_values(headers: Mapping[str, str], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if callable(getall):
        values: list[str] = list(getall(name, []))
        return values
    value = headers.get(name)
    return [] if value is None else [value]


def _parse_bearer(value: str) -> str:
    # RFC 9110 §5.5: leading and trailing whitespace is not part of a field value.
    match = _BEARER_RE.fullmatch(value.strip(" \t"))
    if match is None:
        raise CredentialError(
            "Authorization header malformed; send 'Authorization: Bearer <token>'", reason="malformed"
        )
    return match.group(1)


def credential_from_headers(headers: Mapping[str, str], header_name: str) -> str | None:
    """Extract the credential from request headers; ``None`` when there is none.

    ``headers`` is aiohttp's case-insensitive ``CIMultiDictProxy`` or a plain dict with lower-case keys;
    ``header_name`` is the configured ``auth_header``. For ``authorization`` the value must be
    ``Bearer <b64token>`` (RFC 6750 §2.1, scheme case-insensitive); for any other header the whole value,
    stripped, is the token and an empty value counts as absent. A repeated header, or an Authorization value
    that is not a single Bearer token, raises :class:`CredentialError` with ``reason="malformed"`` - two
    credentials are ambiguous, and choosing one lets an intermediary and the hub disagree on which counts.
    """
    name = header_name.lower()
    values = _get_values(headers, name)
    if not values:
        return None
    if len(values) > 1:
        raise CredentialError(
            f"credential header {name!r} sent more than once; send exactly one", reason="malformed"
        )
    if name == "authorization":
        return _parse_bearer(values[0])
    token = values[0].strip()
    return token or None


def _numeric_date(value: object) -> float | None:
    """RFC 7519 §2 NumericDate as a finite float, or ``None`` when the claim is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _channel_claim(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise CredentialError(
            f"signed token has an invalid {name!r} claim (a list of channel names); mint a new one",
            reason="bad_token",
        )
    return tuple(value)


def _check_key(kid: str, key: Secret) -> None:
    if len(key.reveal().encode()) < MIN_KEY_BYTES:
        raise ValueError(
            f"signing key {kid!r} is shorter than {MIN_KEY_BYTES} bytes (RFC 7518 §3.2); "
            f"generate one with e.g. `openssl rand -base64 48`"
        )


class TokenVerifier:
    """Verifies hub credentials: static tokens and signed tokens (JWT HS256).

    ``static`` are the configured static tokens; ``signing_keys`` maps each ``kid`` to its key (several for
    rotation; ``None`` or empty disables signed tokens); ``audience``, when set, must appear in a signed
    token's ``aud`` - and when unset, a token that carries ``aud`` is refused, since it was meant for someone
    else. ``leeway`` is the clock-skew tolerance for ``exp``/``nbf``, 0 to 1 s.

    Raises :class:`ValueError` for an empty static token, a key shorter than :data:`MIN_KEY_BYTES`, or a
    leeway outside 0-1 s.
    """

    __slots__ = ("_audience", "_keys", "_leeway", "_static")

    def __init__(
        self,
        static: Iterable[StaticTokenLike],
        signing_keys: Mapping[str, Secret] | None = None,
        *,
        audience: str | None = None,
        leeway: float = 1.0,
    ) -> None:
        self._static = tuple(static)
        for entry in self._static:
            if not entry.token:
                raise ValueError(f"static token {entry.name!r} is empty")
        self._keys: dict[str, Secret] = dict(signing_keys or {})
        for kid, key in self._keys.items():
            if not kid:
                raise ValueError("a signing key id (kid) must not be empty")
            _check_key(kid, key)
        if not 0.0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
        self._audience = audience
        self._leeway = float(leeway)

    @property
    def signed_tokens_enabled(self) -> bool:
        return bool(self._keys)

    def verify(self, token: str, *, now: float | None = None) -> Grant:
        """Verify a credential and return its grant; raise :class:`CredentialError` when it does not verify.

        ``now`` (unix seconds, default the current time) is the instant ``exp`` and ``nbf`` are checked
        against. Only :class:`CredentialError` escapes, whatever the input.
        """
        if not token:
            raise CredentialError(_MISSING, reason="missing")
        # Tokens are printable ASCII (RFC 6750 b64token, RFC 7515 base64url); anything else is refused before
        # it reaches a comparison or a decoder.
        if len(token) > MAX_TOKEN_LENGTH or not (token.isascii() and token.isprintable()):
            raise CredentialError(_MALFORMED_TOKEN, reason="malformed")
        grant = self._match_static(token)
        if grant is not None:
            return grant
        if self._keys and _JWT_RE.fullmatch(token):
            return self._verify_signed(token, time.time() if now is None else now)
        raise CredentialError(_NOT_RECOGNISED, reason="bad_token")

    def verify_optional(self, token: str | None, *, now: float | None = None) -> Grant:
        """Like :meth:`verify`, taking ``None`` (no credential sent) as ``reason="missing"``."""
        if token is None:
            raise CredentialError(_MISSING, reason="missing")
        return self.verify(token, now=now)

    def _match_static(self, token: str) -> Grant | None:
        # Compare against every entry without stopping at a match, so response time does not reveal which
        # entry (or how many entries) came before the right one.
        found: StaticTokenLike | None = None
        for entry in self._static:
            if entry.token.matches(token) and found is None:
                found = entry
        if found is None:
            return None
        return Grant(
            subject=found.name,
            subscribe=tuple(found.subscribe),
            publish=tuple(found.publish),
            expires_at=None,
            kind="static",
        )

    def _verify_signed(self, token: str, now: float) -> Grant:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise CredentialError(_BAD_SIGNED, reason="bad_token") from None
        # RFC 8725 §2.1/§3.1: the algorithm comes from our configuration, never from the token; refusing
        # anything but HS256 up front rules out "none" and RS/HS key confusion.
        if header.get("alg") != SIGNING_ALGORITHM:
            raise CredentialError(
                "signed token must use HS256; mint one with `wsgate token`", reason="bad_token"
            )
        # RFC 7515 §4.1.11: a recipient MUST reject critical extensions it does not implement; we implement
        # none (and "b64": false would detach the payload, RFC 7797).
        if "crit" in header or "b64" in header:
            raise CredentialError(_BAD_SIGNED, reason="bad_token")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise CredentialError(
                "signed token lacks a key id ('kid' header); mint one with `wsgate token --kid`",
                reason="bad_token",
            )
        key = self._keys.get(kid)
        if key is None:
            raise CredentialError(
                "signed token names an unknown key id; mint a new one with a current key",
                reason="unknown_kid",
            )
        claims = self._decode(token, key)

        exp = _numeric_date(claims.get("exp"))
        nbf = _numeric_date(claims.get("nbf")) if "nbf" in claims else None
        if exp is None or ("nbf" in claims and nbf is None):
            raise CredentialError(
                "signed token has an invalid 'exp' or 'nbf' claim; mint a new one", reason="bad_token"
            )
        if "iat" in claims and _numeric_date(claims["iat"]) is None:
            raise CredentialError(
                "signed token has an invalid 'iat' claim; mint a new one", reason="bad_token"
            )
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise CredentialError(
                "signed token lacks a subject ('sub' claim); mint one with `wsgate token --sub`",
                reason="bad_token",
            )
        subscribe = _channel_claim(claims, "subscribe")
        publish = _channel_claim(claims, "publish")
        # A handshake-only token (what the gateway mints per connection) proves who may connect now; the
        # connection it opens then outlives it, because nobody behind a byte relay could refresh it.
        handshake_only = claims.get("handshake_only", False)
        if not isinstance(handshake_only, bool):
            raise CredentialError(
                "signed token has an invalid 'handshake_only' claim; mint a new one", reason="bad_token"
            )
        # RFC 7519 §4.1.4: valid only while now < exp; §4.1.5: from nbf on; both "MAY provide for some small
        # leeway" for clock skew.
        if now >= exp + self._leeway:
            raise CredentialError("token expired; mint a new one", reason="expired")
        if nbf is not None and now < nbf - self._leeway:
            raise CredentialError(
                "token not yet valid ('nbf' in the future); check the minting host's clock",
                reason="not_yet_valid",
            )
        return Grant(
            subject=subject,
            subscribe=subscribe,
            publish=publish,
            expires_at=None if handshake_only else exp,
            kind="signed",
        )

    def _decode(self, token: str, key: Secret) -> dict[str, Any]:
        options: Options = {
            "verify_signature": True,
            # Time claims are checked by the caller against its own ``now``: PyJWT only reads the wall clock.
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
            "verify_aud": True,
            "verify_iss": False,
            "verify_sub": True,
            "verify_jti": True,
            "require": ["exp", "sub"],
            "enforce_minimum_key_length": True,
        }
        try:
            return jwt.decode(
                token,
                key.reveal().encode(),
                algorithms=[SIGNING_ALGORITHM],
                audience=self._audience,
                options=options,
            )
        except jwt.InvalidAudienceError:
            raise CredentialError(
                "signed token is for another audience; mint one for this hub's audience",
                reason="bad_audience",
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "aud":
                raise CredentialError(
                    "signed token lacks the 'aud' claim this hub requires; mint one with the audience",
                    reason="bad_audience",
                ) from None
            raise CredentialError(
                f"signed token lacks the required {exc.claim!r} claim; mint a new one with `wsgate token`",
                reason="bad_token",
            ) from None
        except jwt.PyJWTError:
            raise CredentialError(_BAD_SIGNED, reason="bad_token") from None


def mint_token(
    *,
    key: Secret,
    kid: str,
    subject: str,
    ttl: float,
    subscribe: Iterable[str] = (),
    publish: Iterable[str] = (),
    audience: str | None = None,
    handshake_only: bool = False,
    now: float | None = None,
) -> str:
    """Mint a signed token (JWT, HS256) that :class:`TokenVerifier` accepts with ``{kid: key}``.

    The header carries ``kid``; the claims are ``sub``, ``iat`` and ``nbf`` (``now`` rounded down to whole
    seconds), ``exp`` (``iat + ttl``), ``subscribe`` and ``publish`` (always present, as lists of channel
    patterns), ``aud`` when ``audience`` is given, and ``handshake_only: true`` when asked: the token then
    authorises opening a connection before ``exp`` but does not bound the connection's life. Raises
    :class:`ValueError` for an empty subject, kid or channel pattern, a non-positive ``ttl`` or a key shorter
    than :data:`MIN_KEY_BYTES`.
    """
    if not kid:
        raise ValueError("kid must not be empty")
    if not subject:
        raise ValueError("subject must not be empty")
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError("ttl must be a positive number of seconds")
    _check_key(kid, key)
    if isinstance(subscribe, str) or isinstance(publish, str):
        raise ValueError("subscribe and publish must be lists of channel patterns, not strings")
    subscribe_list = list(subscribe)
    publish_list = list(publish)
    if not all(isinstance(p, str) and p for p in (*subscribe_list, *publish_list)):
        raise ValueError("channel patterns must be non-empty strings")
    issued = math.floor(time.time() if now is None else now)
    expires = issued + ttl
    claims: dict[str, Any] = {
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": int(expires) if float(expires).is_integer() else expires,
        "subscribe": subscribe_list,
        "publish": publish_list,
    }
    if audience is not None:
        claims["aud"] = audience
    if handshake_only:
        claims["handshake_only"] = True
    return jwt.encode(claims, key.reveal().encode(), algorithm=SIGNING_ALGORITHM, headers={"kid": kid})


class PublishCredentials:
    """Authenticates callers of the hub's HTTP API (``POST /api/publish``, ``GET /api/presence``).

    ``tokens`` are the ``[hub.publish_api]`` tokens, each granting publish and subscribe on every channel;
    any other credential goes through ``verifier`` and must carry publish rights on the channel.
    """

    __slots__ = ("_tokens", "_verifier")

    def __init__(self, tokens: Iterable[Secret], verifier: TokenVerifier) -> None:
        self._tokens = tuple(tokens)
        if not all(self._tokens):
            raise ValueError("a publish API token must not be empty")
        self._verifier = verifier

    def verify_publisher(
        self, authorization_header: str | None, channel: str | None, *, now: float | None = None
    ) -> Grant:
        """Check an ``Authorization`` header value for the right to publish on ``channel``.

        Raises :class:`CredentialError` (401) when the header is absent, not ``Bearer <token>`` or the token
        does not verify, and :class:`ForbiddenError` (403, ``reason="channel"``) when a valid credential may
        not publish on ``channel``. With ``channel=None`` (e.g. presence) any valid credential passes; the
        caller decides what it may see from the returned grant.
        """
        if authorization_header is None:
            raise CredentialError(
                "no credential; send 'Authorization: Bearer <publish token>'", reason="missing"
            )
        token = _parse_bearer(authorization_header)
        # Every publish token is compared, without stopping early, for the same reason as static tokens.
        matched = False
        for secret in self._tokens:
            if secret.matches(token):
                matched = True
        if matched:
            return Grant(
                subject="publish-api", subscribe=("*",), publish=("*",), expires_at=None, kind="publish_api"
            )
        grant = self._verifier.verify(token, now=now)
        if channel is not None and not grant.can_publish(channel):
            raise ForbiddenError(
                "credential may not publish on this channel; grant it publish rights for the channel",
                reason="channel",
            )
        return grant
