"""Logging set-up and redaction. Loggers by role: ``wsgate.hub``, ``wsgate.gateway``, ``wsgate.access``."""

from __future__ import annotations

import logging
import re
import sys
import time

# Query parameters whose values are credentials; redacted wherever a URL is logged.
SECRET_PARAMS = ("ticket", "token", "access_token", "auth", "key", "password", "secret")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:" + "|".join(SECRET_PARAMS) + r")=)[^&#\s]*")


def redact_url(url: str) -> str:
    """The URL with the values of credential-bearing query parameters replaced by ``[redacted]``."""
    return _SECRET_QUERY.sub(r"\1[redacted]", url)


class UtcFormatter(logging.Formatter):
    """``2026-11-29T16:06:12.768Z INFO wsgate.access: …``: UTC, so lines from several hosts sort together —
    and no local-time conversion, which makes glibc stat /etc/localtime for every line written."""

    default_time_format = "%Y-%m-%dT%H:%M:%S"

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        # An access line per handshake: thousands a second share one second's text (docs/performance.md).
        # One tuple, replaced whole, so a thread never pairs one second with another's text.
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return f"{time.strftime(datefmt, time.gmtime(record.created))}.{int(record.msecs):03d}Z"
        second, text = self._second
        if int(record.created) != second:
            second = int(record.created)
            text = time.strftime(self.default_time_format, time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"


def configure(level: str = "info") -> None:
    """wsgate's own log lines to stderr, as ``UtcFormatter`` writes them. Called by the commands that run a
    server: it also switches off what the logging module gathers for every record and no line of ours shows
    (the caller's file and line, thread, process): the Python logging HOWTO's "Optimization" settings. That
    is a quarter of what an access line costs, and a proxied handshake writes one."""
    logging._srcfile = None  # no sys._getframe() walk per record
    logging.logThreads = False
    logging.logProcesses = False  # an os.getpid() system call per record
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("wsgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
