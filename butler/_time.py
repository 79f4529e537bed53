"""Conversions between user-facing times and the registry's integer nanoseconds.

The registry stores every time (visit begin/end, validity ranges...) as an integer number of
nanoseconds since 1970-01-01T00:00:00 UTC, so times sort, compare and index as plain integers
on every database backend and never lose precision in a float.

Leap seconds are ignored: UTC is treated as POSIX time (every day has exactly 86400 s), the
same convention as astropy's ``unix`` format. An instant inside a leap second (``23:59:60``)
cannot be represented and is rejected.

astropy is never imported here (``import butler`` must stay cheap); astropy ``Time`` objects
are recognised by the module of their type.
"""

from __future__ import annotations

__all__ = ["from_nsec", "to_nsec"]

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_NS_PER_S = 1_000_000_000

_ACCEPTED = (
    "expected a datetime (naive means UTC), a date, an ISO-8601 string such as "
    "'2026-11-24T03:00:00', '2026-11-24T03:00:00.5Z', '2026-11-24 03:00' or '2026-11-24', "
    "an astropy Time, or an integer number of nanoseconds since 1970-01-01T00:00:00 UTC"
)

_ISO_RE = re.compile(
    r"""
    (?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})
    (?:
        [T\ ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})
        (?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]{1,9}))?)?
    )?
    \ ?(?P<tz>Z|[+-][0-9]{2}(?::?[0-9]{2})?)?
    """,
    re.VERBOSE | re.ASCII | re.IGNORECASE,
)


def _bad(value: object, reason: str = "") -> ValueError:
    detail = f" ({reason})" if reason else ""
    return ValueError(f"cannot convert {value!r} to a time{detail}; {_ACCEPTED}")


def _datetime_to_nsec(value: datetime) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        delta = value.replace(tzinfo=None) - _NAIVE_EPOCH
    else:
        delta = value - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    # pandas.Timestamp is a datetime subclass with an extra nanosecond field.
    extra_ns = int(getattr(value, "nanosecond", 0) or 0)
    return seconds * _NS_PER_S + delta.microseconds * 1000 + extra_ns


def _iso_to_nsec(text: str) -> int:
    match = _ISO_RE.fullmatch(text.strip())
    if match is None:
        raise _bad(text, "not an ISO-8601 date or date-time")
    parts = match.groupdict()
    try:
        naive = datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
        )
    except ValueError as err:
        raise _bad(text, str(err)) from None
    nsec = _datetime_to_nsec(naive) + int((parts["fraction"] or "").ljust(9, "0"))
    tz = parts["tz"]
    if tz and tz.upper() != "Z":
        digits = tz[1:].replace(":", "")
        offset = int(digits[:2]) * 3600 + int(digits[2:4] or 0) * 60
        if int(digits[:2]) > 23 or int(digits[2:4] or 0) > 59:
            raise _bad(text, f"bad UTC offset {tz!r}")
        nsec -= (offset if tz[0] == "+" else -offset) * _NS_PER_S
    return nsec


def _astropy_to_nsec(value: Any) -> int:
    if not getattr(value, "isscalar", True):
        raise _bad(value, "an array of times, not a single time")
    from decimal import Decimal

    # 'str' keeps every digit; a float 'unix' value would lose ~0.1 us around 2026.
    unix = Decimal(str(value.utc.to_value("unix", "str")))
    return int((unix * _NS_PER_S).to_integral_value())


def to_nsec(value: object) -> int:
    """Convert ``value`` to integer nanoseconds since 1970-01-01T00:00:00 UTC.

    Accepts a `datetime` (naive means UTC, aware is converted), a `date` (midnight UTC), an
    ISO-8601 string (``'2026-11-24T03:00:00'``, with optional fraction of up to 9 digits,
    ``Z`` or ``+hh:mm`` offset, ``' '`` instead of ``'T'``, or a bare date), an astropy
    ``Time``, a numpy ``datetime64`` or an `int` (already nanoseconds, returned unchanged).

    Raises
    ------
    ValueError
        If the value is of another type or is not a valid time; the message shows the value
        and the accepted forms.
    """
    if isinstance(value, bool):
        raise _bad(value)
    if isinstance(value, int):
        return value
    if isinstance(value, datetime):
        return _datetime_to_nsec(value)
    if isinstance(value, date):
        return _datetime_to_nsec(datetime(value.year, value.month, value.day))
    if isinstance(value, str):
        return _iso_to_nsec(value)
    module = type(value).__module__
    if module.startswith("astropy"):
        return _astropy_to_nsec(value)
    if module.startswith("numpy"):
        kind = getattr(getattr(value, "dtype", None), "kind", None)
        if kind == "M" and getattr(value, "ndim", 0) == 0:
            datetime64: Any = value
            return int(datetime64.astype("datetime64[ns]").astype("int64"))
        if kind in ("i", "u") and getattr(value, "ndim", 0) == 0:
            scalar: Any = value
            return int(scalar)
    raise _bad(value)


def from_nsec(nsec: int) -> datetime:
    """Return the timezone-aware UTC `datetime` for ``nsec`` nanoseconds since the epoch.

    `datetime` holds microseconds, so the result is truncated (towards the past) to whole
    microseconds.
    """
    if isinstance(nsec, bool) or not isinstance(nsec, int):  # ValueError for any bad input, as documented
        raise ValueError(f"expected integer nanoseconds since 1970-01-01 UTC, got {nsec!r}")  # noqa: TRY004
    try:
        return _EPOCH + timedelta(microseconds=nsec // 1000)
    except OverflowError:
        raise ValueError(f"{nsec} nanoseconds since 1970-01-01 UTC is outside years 1-9999") from None
