"""The one RFC 3339 parser (core/timestamps.py): every variant senders write, exact instants."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brigade_cr.core.timestamps import parse_rfc3339

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00Z", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01t00:00:00z", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01 00:00:00Z", datetime(2024, 1, 1, tzinfo=UTC)),
        ("  2024-01-01T00:00:00Z\n", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T00:00:00.5Z", datetime(2024, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        # Nanoseconds (Go) are cut to microseconds, not rounded.
        ("2024-01-01T00:00:00.123456789Z", datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
        ("2024-01-01T00:00:00.9999999Z", datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)),
        ("2024-01-01T01:00:00+01:00", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T01:30:00+0130", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2023-12-31T19:00:00-05:00", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2023-12-31T19:00:00.000-0500", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01T00:00:00", None),
        ("2024-13-01T00:00:00Z", None),
        ("2024-02-30T00:00:00Z", None),
        ("2024-01-01T24:00:00Z", None),
        ("2024-01-01T00:00:60Z", None),
        ("2024-01-01T00:00:00+24:00", None),
        ("2024-01-01T00:00:00+1:00", None),
        ("2024-01-01T00:00:00.Z", None),
        ("2024-01-01", None),
        ("tomorrow", None),
        ("", None),
        ("2024-01-01T00:00:00Zjunk", None),
        # Only ASCII digits: int() would read these Arabic-Indic ones.
        ("\u0662\u0660\u0662\u0664-01-01T00:00:00Z", None),
        # The edges of the calendar, moved out of it by the offset.
        ("9999-12-31T23:59:59-01:00", None),
        ("0001-01-01T00:00:00+01:00", None),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime | None) -> None:
    """A zoned RFC 3339 time is its instant in UTC; anything else (a zone-less one too, by default) is None."""
    parsed = parse_rfc3339(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-01-01 05:06:07.25", datetime(2024, 1, 1, 5, 6, 7, 250000, tzinfo=UTC)),
        ("2024-01-01T01:00:00+01:00", datetime(2024, 1, 1, tzinfo=UTC)),
        ("2024-13-01T00:00:00", None),
    ],
)
def test_naive_is_utc_where_the_caller_says(text: str, expected: datetime | None) -> None:
    """With naive_is_utc a time without a zone is read as UTC; zoned times are read as ever."""
    assert parse_rfc3339(text, naive_is_utc=True) == expected


@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
    st.booleans(),
)
def test_round_trip(when: datetime, offset_minutes: int, colon: bool) -> None:
    """Any instant written with any offset, with or without the colon, reads back as itself."""
    zone = timezone(timedelta(minutes=offset_minutes))
    written = when.replace(tzinfo=zone).isoformat(timespec="microseconds")
    if not colon:
        written = written[:-3] + written[-2:]
    assert parse_rfc3339(written) == when.replace(tzinfo=zone)
