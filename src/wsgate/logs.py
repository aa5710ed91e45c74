"""Logging set-up and redaction. Loggers by role: ``wsgate.hub``, ``wsgate.gateway``, ``wsgate.access``."""

from __future__ import annotations

import logging
import re
import sys

# Query parameters whose values are credentials; redacted wherever a URL is logged.
SECRET_PARAMS = ("ticket", "token", "access_token", "auth", "key", "password", "secret")
_SECRET_QUERY = re.compile(r"(?i)([?&](?:" + "|".join(SECRET_PARAMS) + r")=)[^&#\s]*")


def redact_url(url: str) -> str:
    """The URL with the values of credential-bearing query parameters replaced by ``[redacted]``."""
    return _SECRET_QUERY.sub(r"\1[redacted]", url)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("wsgate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
