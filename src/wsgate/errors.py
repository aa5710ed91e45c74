"""Every exception wsgate raises on purpose derives from :class:`WsgateError`.

The tree::

    WsgateError
    ├── ConfigError          configuration is wrong; names the key and the fix (exit status 2)
    ├── AuthError            a request is refused; carries the HTTP status to answer
    │   ├── CredentialError  401: no credential, or one that does not verify
    │   └── ForbiddenError   403: Origin not allowed, or a right the credential lacks
    ├── ProtocolError        a peer broke the hub's message protocol; carries the error code to answer
    ├── FrameError           a peer broke RFC 6455 framing; carries the close code to fail the connection with
    └── HandshakeError       an HTTP upgrade request is not a valid WebSocket handshake; carries the status

Messages never contain a credential: they are safe to log and to send to the peer.
"""

from __future__ import annotations


class WsgateError(Exception):
    """Root of every error wsgate raises deliberately."""


class ConfigError(WsgateError):
    """A configuration value is missing or wrong.

    ``key`` is the dotted path of the offending key (``hub.limits.max_message``), ``problem`` says what is
    wrong and ``fix`` what to write instead, so the one-line message is enough to repair the file.
    """

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        super().__init__(key, problem, fix)
        self.key = key
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        text = f"{self.key}: {self.problem}" if self.key else self.problem
        return f"{text} (fix: {self.fix})" if self.fix else text


class AuthError(WsgateError):
    """A request is refused. ``status`` is the HTTP status to answer, ``reason`` a short metric label."""

    status = 403

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def __str__(self) -> str:
        return self.message


class CredentialError(AuthError):
    """No credential was presented, or it did not verify (HTTP 401)."""

    status = 401


class ForbiddenError(AuthError):
    """The Origin is not allowed, or the credential lacks the right asked for (HTTP 403)."""

    status = 403


class ProtocolError(WsgateError):
    """A peer sent something the wire protocol does not allow.

    ``code`` is the hub protocol's error code (``bad_request``, ``too_large``, …).
    """

    def __init__(self, message: str, *, code: str = "bad_request") -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


class FrameError(WsgateError):
    """A WebSocket peer broke RFC 6455 after the handshake (a bad frame, text that is not UTF-8, a message
    over the size limit). ``code`` is the close code to fail the connection with (1002, 1007, 1009).
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class HandshakeError(WsgateError):
    """An upgrade request that is not a valid WebSocket opening handshake (RFC 6455 §4.2.1).

    ``status`` is 426 when the request is not an upgrade at all or asks for another protocol version, 400
    when it is a malformed one; ``headers`` are the response headers RFC 6455 asks for.
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def __str__(self) -> str:
        return self.message
