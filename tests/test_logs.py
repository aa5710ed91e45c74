"""wsgate.logs: the line format, URL redaction, and what configure() switches off."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator

import pytest

from tests.conftest import TIMEOUT
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


class Capture(logging.Handler):
    """Keeps the records it is given, and says so through ``arrived``."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()


@pytest.fixture
def captured() -> Iterator[tuple[logs.AccessLog, Capture]]:
    logger = logging.getLogger("wsgate.test-access")
    capture = Capture()
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logs.AccessLog(logger, delay=0.05, max_pending=3), capture
    logger.removeHandler(capture)


async def test_access_lines_reach_logging_together_with_their_own_times(
    captured: tuple[logs.AccessLog, Capture],
) -> None:
    access, capture = captured
    before = time.time()
    access.info("ws tunnel route=%s up=%d", "/ws", 7)
    access.info("ws refuse route=%s", "/ws")
    after = time.time()
    assert capture.records == []  # nothing until the batch is handed over
    await asyncio.wait_for(capture.arrived.wait(), TIMEOUT)
    assert [r.getMessage() for r in capture.records] == ["ws tunnel route=/ws up=7", "ws refuse route=/ws"]
    first = capture.records[0]
    assert before <= first.created <= after  # the event's time, not the batch's
    assert first.msecs == int((first.created - int(first.created)) * 1000)
    assert first.levelno == logging.INFO


async def test_flush_hands_over_at_once_and_a_full_batch_goes_by_itself(
    captured: tuple[logs.AccessLog, Capture],
) -> None:
    access, capture = captured
    access.info("one")
    access.flush()
    assert [r.getMessage() for r in capture.records] == ["one"]
    for name in ("two", "three", "four"):  # max_pending=3
        access.info(name)
    assert [r.getMessage() for r in capture.records] == ["one", "two", "three", "four"]


def test_outside_an_event_loop_a_line_goes_out_at_once(captured: tuple[logs.AccessLog, Capture]) -> None:
    access, capture = captured
    access.info("at once")
    assert [r.getMessage() for r in capture.records] == ["at once"]


def test_a_batch_begun_on_a_closed_loop_is_handed_over_from_the_next(
    captured: tuple[logs.AccessLog, Capture],
) -> None:
    access, capture = captured

    async def log_and_leave() -> None:
        access.info("left behind")  # the loop closes before its timer fires

    asyncio.run(log_and_leave())
    assert capture.records == []

    async def log_again() -> None:
        access.info("next")
        await asyncio.wait_for(capture.arrived.wait(), TIMEOUT)

    asyncio.run(log_again())
    assert [r.getMessage() for r in capture.records] == ["left behind", "next"]


def test_lines_below_the_loggers_level_are_not_even_kept(captured: tuple[logs.AccessLog, Capture]) -> None:
    access, capture = captured
    access.logger.setLevel(logging.WARNING)
    access.info("unwanted")
    access.flush()
    assert capture.records == []
