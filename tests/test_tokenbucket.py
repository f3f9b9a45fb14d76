"""The one token bucket (core/tokenbucket.py): its arithmetic, at exact times."""

from __future__ import annotations

import math

import pytest

from brigade_cr.core.tokenbucket import NEVER_REFILLS_RETRY_AFTER, TokenBucket


def test_full_bucket_takes_burst_then_refuses() -> None:
    """A full bucket gives ``burst`` tokens at one instant, then refuses without taking anything."""
    bucket = TokenBucket.full(per_second=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert (bucket.tokens, bucket.stamp) == (0.0, 100.0)


def test_level_refills_at_rate_up_to_burst() -> None:
    """The level grows by ``per_second`` a second, is capped at ``burst``, and reading it changes nothing."""
    bucket = TokenBucket(per_second=2.0, burst=3, tokens=0.0, stamp=10.0)
    assert bucket.level(10.25) == 0.5
    assert bucket.level(11.0) == 2.0
    assert bucket.level(1000.0) == 3.0
    # A clock that went back adds nothing (and takes nothing away).
    assert bucket.level(5.0) == 0.0
    assert (bucket.tokens, bucket.stamp) == (0.0, 10.0)


def test_wait_and_retry_after() -> None:
    """wait is the exact time to the next token; retry_after rounds it up to whole seconds, at least 1."""
    bucket = TokenBucket(per_second=0.5, burst=2, tokens=0.25, stamp=0.0)
    assert bucket.wait(0.0) == 1.5
    assert bucket.retry_after(0.0) == 2
    assert bucket.wait(1.0) == 0.5
    assert bucket.retry_after(1.0) == 1
    assert bucket.wait(1.5) == 0.0
    assert bucket.retry_after(1.4) == 1


def test_a_bucket_that_never_refills() -> None:
    """per_second 0: the wait is infinite and the Retry-After an hour."""
    bucket = TokenBucket(per_second=0.0, burst=1, tokens=0.0, stamp=0.0)
    assert bucket.wait(10.0) == math.inf
    assert bucket.retry_after(10.0) == NEVER_REFILLS_RETRY_AFTER == 3600
    assert not bucket.take(10.0**9)


def test_take_with_slack() -> None:
    """Slack admits a level a hair under one token (float error at exactly one token's time)."""
    bucket = TokenBucket(per_second=1.0, burst=1, tokens=1.0 - 1e-12, stamp=0.0)
    assert not bucket.take(0.0)
    assert bucket.take(0.0, slack=1e-9)
    assert bucket.tokens == pytest.approx(-1e-12)
    assert bucket.stamp == 0.0


def test_refill_rebases() -> None:
    """refill records the level as of now, so later levels count from then."""
    bucket = TokenBucket(per_second=1.0, burst=5, tokens=1.0, stamp=0.0)
    bucket.refill(2.0)
    assert (bucket.tokens, bucket.stamp) == (3.0, 2.0)
    assert bucket.level(3.0) == 4.0
