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

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime(datefmt or self.default_time_format, time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    default_time_format = "%Y-%m-%dT%H:%M:%S"


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("wsgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
