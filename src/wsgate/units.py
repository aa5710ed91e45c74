"""Durations and sizes as people write them in configuration: ``"30s"``, ``"5m"``, ``"64KiB"``.

The ``parse_*`` functions accept everything the ``format_*`` functions produce, so ``wsgate check`` can print
a value that reads back unchanged. All four raise :class:`ValueError` with a message that says what form is
expected; the message repeats the offending text, so do not pass secrets through them.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, localcontext

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

# Seconds per unit. Arithmetic is done in Decimal so that "250ms" is exactly the float nearest to 0.25 and a
# formatted value always parses back to the same float.
_DURATION_UNITS: dict[str, Decimal] = {
    "d": Decimal(86400),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_DURATION_FORM = "a number and a unit (ms, s, m, h or d), like '250ms', '30s' or '5m'"

# Bytes per unit: IEC binary prefixes (KiB = 1024) and SI decimal prefixes (kB = 1000), IEC 80000-13.
_BINARY_UNITS: dict[str, int] = {"TiB": 1024**4, "GiB": 1024**3, "MiB": 1024**2, "KiB": 1024}
_DECIMAL_UNITS: dict[str, int] = {"TB": 1000**4, "GB": 1000**3, "MB": 1000**2, "kB": 1000}
_SIZE_UNITS: dict[str, int] = {**_BINARY_UNITS, **_DECIMAL_UNITS, "B": 1}
_SIZE_FORM = (
    "a whole number of bytes, or a number and a unit (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), like '64KiB'"
)

_NUMBER_AND_UNIT = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[A-Za-z]*)")


def _scale(number: str, factor: Decimal) -> Decimal:
    """``number × factor`` without rounding: the precision grows with the digits written."""
    with localcontext(prec=len(number) + 30):
        return Decimal(number) * factor


def parse_duration(text: str) -> float:
    """Return the duration ``text`` stands for, in seconds.

    Accepts a non-negative number followed by ``ms``, ``s``, ``m``, ``h`` or ``d`` (``"250ms"``, ``"1.5h"``),
    or a bare number of seconds (``"1.5"``). Raises :class:`ValueError` for anything else, including negative,
    infinite and NaN values.
    """
    if not isinstance(text, str):
        raise TypeError(f"a duration must be given as a string, not {type(text).__name__}")
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is negative; a duration must be zero or more, {_DURATION_FORM}")
    match = _NUMBER_AND_UNIT.fullmatch(stripped)
    if match is None or match["unit"] not in (*_DURATION_UNITS, ""):
        raise ValueError(f"{text!r} is not a duration; expected {_DURATION_FORM}")
    factor = _DURATION_UNITS.get(match["unit"], Decimal(1))
    seconds = float(_scale(match["number"], factor))
    if not math.isfinite(seconds):
        raise ValueError(f"{text!r} is too long a duration")
    return seconds


def format_duration(seconds: float) -> str:
    """Spell ``seconds`` in the largest unit that keeps it exact: 600 → ``"10m"``, 0.25 → ``"250ms"``.

    :func:`parse_duration` of the result is exactly ``seconds``. Raises :class:`ValueError` for negative or
    non-finite values.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration; it must be finite and zero or more")
    if seconds == 0:
        return "0s"
    # repr() is the shortest decimal that reads back as the same float, so scaling it by a unit is exact.
    exact = Decimal(repr(float(seconds)))
    for unit, factor in _DURATION_UNITS.items():
        count = exact / factor
        if count == count.to_integral_value():
            candidate = f"{int(count)}{unit}"
            # Very large values exceed Decimal's precision; only keep a spelling that reads back exactly.
            if parse_duration(candidate) == seconds:
                return candidate
    return f"{exact:f}s"


def parse_size(text: str | int) -> int:
    """Return the number of bytes ``text`` stands for.

    Accepts a non-negative integer (bytes), a string of digits (bytes), or a number followed by a unit: ``B``,
    ``kB``/``MB``/``GB``/``TB`` (powers of 1000) or ``KiB``/``MiB``/``GiB``/``TiB`` (powers of 1024), as in
    ``"64KiB"`` or ``"1.5MiB"``. The result must be a whole number of bytes; anything else raises
    :class:`ValueError`.
    """
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise ValueError(
            f"a size must be an integer or a string, not {type(text).__name__}; expected {_SIZE_FORM}"
        )
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{text} is negative; a size must be zero or more")
        return text
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"{text!r} is negative; a size must be zero or more")
    match = _NUMBER_AND_UNIT.fullmatch(stripped)
    if match is not None and match["unit"] == "KB":
        raise ValueError(f"{text!r} is ambiguous; write kB for 1000 bytes or KiB for 1024 bytes")
    if match is None or match["unit"] not in (*_SIZE_UNITS, ""):
        raise ValueError(f"{text!r} is not a size; expected {_SIZE_FORM}")
    amount = _scale(match["number"], Decimal(_SIZE_UNITS.get(match["unit"], 1)))
    if amount != amount.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(amount)


def format_size(n: int) -> str:
    """Spell ``n`` bytes in the largest unit that keeps it exact: 65536 → ``"64KiB"``, 10000 → ``"10kB"``.

    Binary units are preferred because limits are usually powers of two. :func:`parse_size` of the result is
    ``n``. Raises :class:`ValueError` for negative values.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"cannot format {n!r} as a size; it must be an integer, zero or more")
    if n == 0:
        return "0B"
    for units in (_BINARY_UNITS, _DECIMAL_UNITS):
        for unit, factor in units.items():
            if n % factor == 0:
                return f"{n // factor}{unit}"
    return f"{n}B"
