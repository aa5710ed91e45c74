"""Durations and sizes: parsing, formatting, and that every formatted value parses back to itself."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        ("100ms", 0.1),
        (" 30s ", 30.0),
        ("30 s", 30.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "-5s",
        "-0.5",
        "nan",
        "inf",
        "NaN",
        "Infinity",
        "5 minutes",
        "5sec",
        "5M",
        "1e3s",
        "s",
        "1..5s",
        "5s5",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration") as info:
        parse_duration(text)
    assert "expected" in str(info.value) or "negative" in str(info.value)


def test_parse_duration_says_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        parse_duration("-5s")


def test_parse_duration_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_duration(30)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (600, "10m"),
        (600.0, "10m"),
        (0, "0s"),
        (0.25, "250ms"),
        (86400, "1d"),
        (90, "90s"),
        (3600, "1h"),
        (1.5, "1500ms"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [-1.0, math.nan, math.inf, -math.inf])
def test_format_duration_rejects(seconds: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        format_duration(seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 65536),
        ("1MiB", 1_048_576),
        ("2GiB", 2 * 1024**3),
        ("512B", 512),
        ("10kB", 10_000),
        ("1MB", 1_000_000),
        ("1GB", 1_000_000_000),
        ("1TiB", 1024**4),
        ("1.5KiB", 1536),
        ("4096", 4096),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "-1", -1, "1.5B", "0.0003kB", "64kb", "64K", "1 gigabyte", "nan", "1e3", True, 1.5, "64 KiB B"],
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match=r"size|bytes|negative"):
        parse_size(text)  # type: ignore[arg-type]


def test_parse_size_explains_ambiguous_kb() -> None:
    with pytest.raises(ValueError, match=r"kB.*KiB"):
        parse_size("64KB")


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (65536, "64KiB"),
        (1_048_576, "1MiB"),
        (10_000, "10kB"),
        (1_000_000, "1MB"),
        (0, "0B"),
        (1, "1B"),
        (1500, "1500B"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize("size", [-1, True])
def test_format_size_rejects(size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        format_size(size)


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_duration_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["ms", "s", "m", "h", "d", ""]))
def test_written_duration_formats_to_an_equal_duration(count: int, unit: str) -> None:
    seconds = parse_duration(f"{count}{unit}")
    assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(parse_duration(format_duration(seconds))) == format_duration(seconds)


@given(st.integers(min_value=0, max_value=2**70))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(
        [("B", 1), ("kB", 1000), ("MB", 1000**2), ("KiB", 1024), ("MiB", 1024**2), ("GiB", 1024**3)]
    ),
)
def test_size_units(count: int, unit: tuple[str, int]) -> None:
    name, factor = unit
    assert parse_size(f"{count}{name}") == count * factor
    assert parse_size(format_size(count * factor)) == count * factor
