"""Channel history and the recovery decision, with time passed in."""

from __future__ import annotations

from wsgate.hub.history import ChannelLog


def filled(n: int, *, size: int = 100, ttl: float = 600.0, at: float = 0.0) -> ChannelLog:
    log = ChannelLog("epoch-1", size=size, ttl=ttl)
    for i in range(n):
        log.append(f'"m{i + 1}"', at)
    return log


def test_offsets_rise_by_one_from_one() -> None:
    log = ChannelLog("e", size=10, ttl=60)
    assert log.last_offset == 0
    assert [log.append("1", 0.0) for _ in range(3)] == [1, 2, 3]


def test_missed_messages_are_exactly_those_after_the_offset() -> None:
    log = filled(10)
    missed = log.missed_since("epoch-1", 7, now=1.0)
    assert missed is not None
    assert [e.offset for e in missed] == [8, 9, 10]
    assert [e.data for e in missed] == ['"m8"', '"m9"', '"m10"']


def test_nothing_missed_is_a_successful_empty_recovery() -> None:
    assert filled(3).missed_since("epoch-1", 3, now=1.0) == []
    assert ChannelLog("e", size=0, ttl=1).missed_since("e", 0, now=5.0) == []


def test_other_epoch_or_future_offset_cannot_recover() -> None:
    log = filled(3)
    assert log.missed_since("epoch-0", 1, now=1.0) is None
    assert log.missed_since("epoch-1", 4, now=1.0) is None


def test_trimmed_by_size_cannot_recover_but_the_retained_window_can() -> None:
    log = filled(10, size=4)  # holds 7..10
    assert log.missed_since("epoch-1", 5, now=1.0) is None
    missed = log.missed_since("epoch-1", 6, now=1.0)
    assert missed is not None
    assert [e.offset for e in missed] == [7, 8, 9, 10]


def test_trimmed_by_age_cannot_recover() -> None:
    log = ChannelLog("e", size=100, ttl=10.0)
    log.append("1", 0.0)
    log.append("2", 5.0)
    assert log.missed_since("e", 0, now=9.0) is not None
    assert log.missed_since("e", 0, now=10.5) is None  # offset 1 aged out
    missed = log.missed_since("e", 1, now=10.5)
    assert missed is not None
    assert [e.offset for e in missed] == [2]
    log.trim(16.0)
    assert log.is_empty()
    assert log.last_offset == 2  # offsets never go back, even when history is empty
