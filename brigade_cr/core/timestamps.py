"""
The one RFC 3339 parser.

Senders write times in every variant RFC 3339 and its neighbours allow (see
docs/registries.md section 5.11): ``Z`` or ``z``, ``+hh:mm`` and ``+hhmm``
offsets, ``T``, ``t`` or a space between date and time, any number of
fractional digits (Go writes nanoseconds), and some write no zone at all.
Pure: no clock.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

# ASCII digits only: ``\d`` would take other scripts' digits, which int() reads.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})?"
)


def parse_rfc3339(text: str, naive_is_utc: bool = False) -> datetime | None:
    """
    The aware datetime, in UTC, that ``text`` (surrounding white space
    ignored) writes; None when it is not an RFC 3339 date-time or names no
    real instant (month 13, an offset pushing it out of the calendar).

    Fractions finer than a microsecond are cut, not rounded. A time with no
    zone is UTC when ``naive_is_utc`` is set, else None: only the caller
    knows whether its sender means UTC.
    """
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if zone is None and not naive_is_utc:
        return None
    offset = timedelta(0)
    if zone not in (None, "Z", "z"):
        assert zone is not None
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    try:
        local = datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            int((fraction or "0")[:6].ljust(6, "0")),
            tzinfo=timezone(offset),
        )
        return local.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        # ValueError: no such date, or an offset of a day or more;
        # OverflowError: a date at the edge of the calendar moved by its offset.
        return None


__all__ = ["parse_rfc3339"]
