"""wsgate.logs: the line format, URL redaction, and what configure() switches off."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from wsgate import logs


def record(
    created: float, message: str = "hello %s", args: tuple[object, ...] = ("kiosk",)
) -> logging.LogRecord:
    entry = logging.LogRecord("wsgate.access", logging.INFO, __file__, 1, message, args, None)
    entry.created = created
    entry.msecs = (created - int(created)) * 1000
    return entry


def test_lines_carry_utc_iso_8601_time_with_milliseconds() -> None:
    formatter = logs.UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    assert (
        formatter.format(record(1_796_000_000.25))
        == "2026-11-30T00:53:20.250Z INFO wsgate.access: hello kiosk"
    )


def test_each_second_gets_its_own_text_though_it_is_computed_once() -> None:
    formatter = logs.UtcFormatter("%(asctime)s")
    stamps = [formatter.format(record(t)) for t in (59.5, 59.75, 60.0, 59.125, 3600.25)]
    assert stamps == [
        "1970-01-01T00:00:59.500Z",
        "1970-01-01T00:00:59.750Z",
        "1970-01-01T00:01:00.000Z",
        "1970-01-01T00:00:59.125Z",  # an earlier second's record (another thread) keeps its own second
        "1970-01-01T01:00:00.250Z",
    ]


def test_an_explicit_date_format_is_honoured() -> None:
    formatter = logs.UtcFormatter("%(asctime)s", datefmt="%H:%M:%S")
    assert formatter.format(record(3600.5)) == "01:00:00.500Z"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/ws?token=abc&x=1", "/ws?token=[redacted]&x=1"),
        ("/ws?x=1&ACCESS_TOKEN=abc#f", "/ws?x=1&ACCESS_TOKEN=[redacted]#f"),
        ("/ws?tokens=abc", "/ws?tokens=abc"),
    ],
)
def test_credential_query_values_are_redacted(url: str, expected: str) -> None:
    assert logs.redact_url(url) == expected


@pytest.fixture
def restored_logging() -> Iterator[None]:
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    root = logging.getLogger("wsgate")
    handlers, level, propagate = root.handlers[:], root.level, root.propagate
    yield
    logging._srcfile, logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved
    root.handlers[:], root.level, root.propagate = handlers, level, propagate


@pytest.mark.usefixtures("restored_logging")
def test_configure_writes_to_stderr_and_gathers_nothing_a_line_does_not_show(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logs.configure()
    logging.getLogger("wsgate.access").info("ws tunnel route=%s", "/ws")
    line = stream.getvalue()
    assert line.endswith("Z INFO wsgate.access: ws tunnel route=/ws\n")
    captured: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = captured.append  # type: ignore[method-assign]
    logging.getLogger("wsgate").addHandler(handler)
    logging.getLogger("wsgate.access").info("another")
    (entry,) = captured
    # No stack walk, thread name or getpid() system call per record (the logging HOWTO's "Optimization").
    assert (entry.funcName, entry.threadName, entry.process) == ("(unknown function)", None, None)
