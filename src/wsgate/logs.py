"""Logging set-up and redaction. Loggers by role: ``wsgate.hub``, ``wsgate.gateway``, ``wsgate.access``."""

from __future__ import annotations

import asyncio
import atexit
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
            text = time.strftime(datefmt, time.gmtime(record.created))
        else:
            second, text = self._second
            if int(record.created) != second:
                second = int(record.created)
                text = time.strftime(self.default_time_format, time.gmtime(second))
                self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"


class AccessLog:
    """The access log: a line per request, tunnel or connection, on the ``wsgate.access`` logger at INFO,
    handed to logging in batches.

    ``info(msg, *args)`` keeps the line's time and arguments; logging gets the records together, at most
    ``delay`` seconds later, stamped with their own times, through its usual handlers, filters and formats.
    Built one at a time between the handshakes they describe, a record, its handler chain and its
    formatting cost ~30 µs of a proxied handshake; built together they cost a fraction of that
    (docs/performance.md). :meth:`flush` hands over what waits at once: the servers call it when they stop,
    and it runs at exit. Outside a running event loop a line goes out at once. What this trades: a process
    killed outright (SIGKILL, the OOM killer) loses at most ``delay`` of access lines, and a line may come
    after a warning logged later. Warnings and errors never wait: they are not access lines. One thread
    logs through it (the servers log access from their event loop's).
    """

    def __init__(self, logger: logging.Logger, *, delay: float = 0.1, max_pending: int = 1000) -> None:
        self.logger = logger
        self.delay = delay
        self.max_pending = max_pending
        self._pending: list[tuple[float, str, tuple[object, ...]]] = []
        # The loop whose timer will flush the batch, if any; a batch begun on a loop that has since closed
        # gets a timer on the next.
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def info(self, msg: str, *args: object) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self._pending.append((time.time(), msg, args))
        if len(self._pending) >= self.max_pending or not self._flush_later():
            self.flush()

    def _flush_later(self) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if self._timer_loop is not loop:
            loop.call_later(self.delay, self._flush_due)
            self._timer_loop = loop
        return True

    def _flush_due(self) -> None:
        self._timer_loop = None
        self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        logger = self.logger
        for created, msg, args in pending:
            record = logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, msg, args, None)
            # The event's time, not this batch's (as LogRecord.__init__ computes them).
            record.relativeCreated -= (record.created - created) * 1000
            record.created = created
            record.msecs = int((created - int(created)) * 1000) + 0.0
            logger.handle(record)


access_log = AccessLog(logging.getLogger("wsgate.access"))
atexit.register(access_log.flush)  # before logging's own shutdown, registered earlier: atexit runs LIFO


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
