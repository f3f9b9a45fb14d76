"""
The one token bucket, and the keyed limiter built on it.

- ``TokenBucket``: ``burst`` tokens at most, refilled at ``per_second``; the
  refill, level and wait arithmetic lives here and nowhere else.
- ``RateLimiter``: buckets keyed by a string (a source address and project,
  see ``gateway.failure_key``; a project ID), with a bounded number of keys
  so that no sender can make the table grow without end. It answers at once
  ("not now, retry in N s"); ``stores.retry.Throttle`` is the waiting kind,
  built on the same bucket.

Nothing here reads the time itself: every call is given ``now`` (or the
limiter a clock), so tests step a ``Clock``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime

# What ``retry_after`` says for a bucket that never refills (``per_second``
# 0): "not within the hour".
NEVER_REFILLS_RETRY_AFTER = 3600


@attrs.define
class TokenBucket:
    """
    ``tokens`` as of time ``stamp``; at most ``burst``, refilled continuously
    at ``per_second`` (0 for a bucket that never refills).
    """

    per_second: float
    burst: int
    tokens: float
    stamp: float

    @classmethod
    def full(cls, per_second: float, burst: int, now: float) -> TokenBucket:
        """A bucket holding ``burst`` tokens at ``now``."""
        return cls(per_second, burst, float(burst), now)

    def level(self, now: float) -> float:
        """The tokens there are at ``now`` (a clock going back adds none). Changes nothing."""
        return min(float(self.burst), self.tokens + max(0.0, now - self.stamp) * self.per_second)

    def refill(self, now: float) -> None:
        """Bring ``tokens`` up to date at ``now``."""
        self.tokens = self.level(now)
        self.stamp = now

    def take(self, now: float, slack: float = 0.0) -> bool:
        """
        Take one token at ``now`` if there is one (within ``slack``, for a
        caller woken at exactly one token's time, when float arithmetic may
        leave 0.9999999): True if taken, else False and nothing changes.
        """
        level = self.level(now)
        if level < 1.0 - slack:
            return False
        self.tokens = level - 1.0
        self.stamp = now
        return True

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a token is there: 0 if one is, ``inf`` if it never will be."""
        missing = 1.0 - self.level(now)
        if missing <= 0:
            return 0.0
        if self.per_second <= 0:
            return math.inf
        return missing / self.per_second

    def retry_after(self, now: float) -> int:
        """
        ``wait(now)`` as a ``Retry-After``: whole seconds, rounded up, at
        least 1; ``NEVER_REFILLS_RETRY_AFTER`` for a bucket that never refills.
        """
        if self.per_second <= 0:
            return NEVER_REFILLS_RETRY_AFTER
        return max(1, math.ceil(self.wait(now)))


@attrs.define
class RateLimiter:
    """
    A ``TokenBucket`` per key: ``burst`` events at once per key, refilled at
    ``per_second``. A key never seen has a full bucket. When more than
    ``max_keys`` keys are tracked the least recently charged is forgotten
    (it starts again with a full bucket, which errs towards admitting).
    """

    clock: IReactorTime
    per_second: float
    burst: int
    max_keys: int = 10_000
    _buckets: OrderedDict[str, TokenBucket] = attrs.field(factory=OrderedDict, init=False)

    def blocked(self, key: str) -> int | None:
        """Seconds until ``key`` may act again, or None if it may now. Consumes nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return None
        now = self.clock.seconds()
        return None if bucket.level(now) >= 1.0 else bucket.retry_after(now)

    def consume(self, key: str) -> int | None:
        """
        Take one token for ``key``: None if there was one, else the seconds
        until there will be (and nothing is taken, nor the key refreshed).
        """
        now = self.clock.seconds()
        bucket = self._buckets.get(key) or TokenBucket.full(self.per_second, self.burst, now)
        if not bucket.take(now):
            return bucket.retry_after(now)
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None

    def __len__(self) -> int:
        return len(self._buckets)


__all__ = ["NEVER_REFILLS_RETRY_AFTER", "RateLimiter", "TokenBucket"]
