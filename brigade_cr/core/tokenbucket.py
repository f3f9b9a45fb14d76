"""
Token buckets keyed by a string (a source address and project, see
``gateway.failure_key``; a project ID), with a bounded number of keys so
that no sender can make the table grow without end.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import attrs
from twisted.internet.interfaces import IReactorTime


@attrs.define
class RateLimiter:
    """
    ``burst`` events at once per key, refilled at ``per_second``. When more
    than ``max_keys`` keys are tracked the least recently used is forgotten
    (it starts again with a full bucket, which errs towards admitting).
    """

    clock: IReactorTime
    per_second: float
    burst: int
    max_keys: int = 10_000
    _buckets: OrderedDict[str, tuple[float, float]] = attrs.field(factory=OrderedDict, init=False)

    def _level(self, key: str) -> float:
        now = self.clock.seconds()
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + max(0.0, now - then) * self.per_second)

    def _retry_after(self, level: float) -> int:
        if self.per_second <= 0:
            return 3600
        return max(1, math.ceil((1.0 - level) / self.per_second))

    def blocked(self, key: str) -> int | None:
        """Seconds until ``key`` may act again, or None if it may now. Consumes nothing."""
        if key not in self._buckets:
            return None
        level = self._level(key)
        return None if level >= 1.0 else self._retry_after(level)

    def consume(self, key: str) -> int | None:
        """
        Take one token for ``key``: None if there was one, else the seconds
        until there will be (and nothing is taken).
        """
        level = self._level(key)
        if level < 1.0:
            return self._retry_after(level)
        self._buckets[key] = (level - 1.0, self.clock.seconds())
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return None

    def __len__(self) -> int:
        return len(self._buckets)
