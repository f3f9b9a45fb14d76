"""
How brigade-cr waits before asking the Kubernetes API again (promise P4,
docs/guarantees.md).

- ``Backoff``: jittered exponential backoff (base 0.5 s, factor 2, capped at
  30 s) that honours a server's ``Retry-After``.
- ``Throttle``: a client-side rate limit that waits for its token (the one
  ``core.tokenbucket.TokenBucket``; the gateway's defaults are
  ``--kube-qps``/``--kube-burst``, see docs/performance.md), so that a
  backlog drained after an outage does not become a storm against the API
  server, and that every caller pauses when the server asks one to
  (``pause``).
- ``ThrottledBuilds``: an ``IBuilds`` that takes a ``Throttle`` token before
  every call to the ``IBuilds`` it wraps, and pauses the throttle for a
  server's ``Retry-After`` (a 429 from API Priority and Fairness).
- ``RetryingBuilds``: an ``IBuilds`` that retries transient failures within a
  time budget; what the gateway uses when there is no spool, since a sender
  waits only a few seconds (ACR: 5 s) for its answer.

Nothing here reads the time or randomness itself: the clock and the random
source are passed in, so tests give exact delays with a ``Clock``.
"""

from __future__ import annotations

import math
import random as _random
from collections import deque
from typing import Callable, ClassVar

import attrs
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from brigade_cr.core.errors import BackendUnavailable
from brigade_cr.core.interfaces import IBuilds, IPacedBuilds
from brigade_cr.core.tokenbucket import TokenBucket
from brigade_cr.core.values import Build, Receipt

# The longest Retry-After honoured: a server asking for an hour (or sending a
# nonsense value) must not park a spool's head record for that long.
MAX_RETRY_AFTER = 300.0

# The gateway's ``Throttle.tick``: a backlog at the limit is handed its
# tokens ten times a second (see ``Throttle``).
THROTTLE_TICK = 0.1

# How long a delivery without a spool may spend on retries: ACR waits 5 s
# for an answer; leave room for the last attempt and the response itself.
NO_SPOOL_BUDGET = 4.0

# Beyond this many doublings every delay is the cap anyway; stopping here
# keeps ``factor ** attempt`` from overflowing a float after days of outage.
_MAX_EXPONENT = 64


@attrs.frozen
class Backoff:
    """
    Exponential backoff with "equal jitter": before retry number ``attempt``
    (0 for the first retry) the ceiling is ``min(cap, base * factor **
    attempt)`` and the delay is drawn uniformly from ``[ceiling / 2,
    ceiling)``.

    Equal jitter rather than "full jitter" (``[0, ceiling)``): brigade-cr has
    one drainer per spool, so spreading retries over the whole interval buys
    little, while full jitter can retry almost at once, again and again, into
    an API that is down. Half the ceiling is a guaranteed pause; the other
    half still de-synchronises replicas.

    ``random`` returns a float in ``[0, 1)`` (``random.random`` by default);
    tests pass a constant to get exact delays.
    """

    random: Callable[[], float] = _random.random
    base: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    max_retry_after: float = MAX_RETRY_AFTER

    def ceiling(self, attempt: int) -> float:
        """The largest delay before retry number ``attempt``."""
        exponent = min(max(attempt, 0), _MAX_EXPONENT)
        return float(min(self.cap, self.base * self.factor**exponent))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """
        Seconds to wait before retry number ``attempt`` (0-based).

        A server's ``retry_after`` is a floor: never retry sooner than it
        says, but no later than ``max_retry_after`` (300 s) however long it
        asks for. The jittered delay itself never exceeds ``cap`` (30 s).
        """
        ceiling = self.ceiling(attempt)
        jittered = ceiling / 2 + self.random() * ceiling / 2
        if retry_after is None:
            return jittered
        return max(jittered, min(max(float(retry_after), 0.0), self.max_retry_after))


@attrs.define
class Throttle:
    """
    A waiting ``TokenBucket``: ``burst`` tokens at most, refilled at
    ``per_second``.

    ``acquire()`` takes a token, waiting (on ``clock``) for one when the
    bucket is empty. Waiters are served first come, first served: a caller
    never overtakes one that asked before it.

    ``pause(seconds)`` hands out no token for that long, to anyone: the
    server's answer to one request (429 with ``Retry-After``) is about the
    client, not the one record that got it.

    With ``tick`` set, while more than one caller waits, tokens are handed
    out at most every ``tick`` seconds (never longer than the bucket takes
    to fill, ``burst / per_second``, so the rate is the same), as many at a
    time as have come: a backlog drained at the limit then does its work in
    a few reactor turns a second rather than one per token, which measured
    at nearly half the CPU of each build it creates (docs/performance.md).
    A lone waiter is served at its token's time.
    """

    clock: IReactorTime
    per_second: float = 5.0
    burst: int = 10
    tick: float = 0.0
    _bucket: TokenBucket = attrs.field(init=False)
    _waiters: deque[Deferred[None]] = attrs.field(init=False, factory=deque)
    _timer: IDelayedCall | None = attrs.field(init=False, default=None)
    _paused_until: float = attrs.field(init=False, default=float("-inf"))

    def __attrs_post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1 or self.tick < 0:
            raise ValueError("a Throttle needs per_second > 0, burst >= 1 and tick >= 0")
        self._bucket = TokenBucket.full(self.per_second, self.burst, self.clock.seconds())

    def acquire(self) -> Deferred[None]:
        """
        A Deferred that fires with None once a token is taken: at once when
        one is free and nobody is waiting, else in turn.

        Cancelling it gives up the place in line (it fails with
        ``CancelledError``) without taking a token.
        """
        now = self.clock.seconds()
        if not self._waiters and now >= self._paused_until and self._bucket.take(now):
            return succeed(None)
        waiter: Deferred[None] = Deferred(self._cancel)
        self._waiters.append(waiter)
        self._schedule()
        return waiter

    def pause(self, seconds: float) -> None:
        """
        Hand out no token for ``seconds`` from now (at most
        ``MAX_RETRY_AFTER``; a pause already longer is kept). Callers keep
        their place in line and are served, at the usual rate, once it ends.
        """
        seconds = min(max(float(seconds), 0.0), MAX_RETRY_AFTER)
        until = self.clock.seconds() + seconds
        if until <= self._paused_until:
            return
        self._paused_until = until
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._timer = None
        self._schedule()

    @property
    def paused_for(self) -> float:
        """Seconds left of the current pause (0 when there is none)."""
        return max(0.0, self._paused_until - self.clock.seconds())

    @property
    def waiting(self) -> int:
        """How many callers are waiting for a token."""
        return len(self._waiters)

    def would_wait(self) -> bool:
        """True when ``acquire()`` now would wait; takes no token."""
        now = self.clock.seconds()
        return bool(self._waiters) or now < self._paused_until or self._bucket.level(now) < 1.0

    def _schedule(self) -> None:
        if not self._waiters or (self._timer is not None and self._timer.active()):
            return
        now = self.clock.seconds()
        delay = max(self._bucket.wait(now), self._paused_until - now)
        if len(self._waiters) > 1:
            delay = max(delay, min(self.tick, self.burst / self.per_second))
        self._timer = self.clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        ready: list[Deferred[None]] = []
        # Woken at exactly one token's time, float arithmetic may leave 0.9999999.
        while self._waiters and now >= self._paused_until - 1e-9 and self._bucket.take(now, slack=1e-9):
            ready.append(self._waiters.popleft())
        # Schedule before firing: a waiter's callbacks may call acquire().
        self._schedule()
        for waiter in ready:
            waiter.callback(None)

    def _cancel(self, waiter: Deferred[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return
        if not self._waiters and self._timer is not None and self._timer.active():
            self._timer.cancel()
            self._timer = None


@implementer(IPacedBuilds)
@attrs.define
class ThrottledBuilds:
    """
    An ``IBuilds`` that takes a token from ``throttle`` before each
    ``inner.submit``; a ``BackendUnavailable`` carrying the server's
    ``retry_after`` (429 from API Priority and Fairness, 503 with
    ``Retry-After``) pauses ``throttle`` for that long, so every caller
    behind it waits, not only the one that got the answer.
    """

    inner: IBuilds
    throttle: Throttle
    # Without a spool a sender waits for the answer: a pause longer than
    # this is answered at once rather than held past the sender's patience.
    max_pause_wait: float | None = None

    def submit(self, build: Build) -> Deferred[Receipt]:
        """
        Fires and fails as ``inner.submit(build)`` does, once a token was
        taken. Fails at once with ``BackendUnavailable`` (``retry_after``:
        the pause left, rounded up) when the throttle is paused for longer
        than ``max_pause_wait``. Cancelling while waiting for the token fails
        it with ``CancelledError`` and never calls ``inner``.
        """
        paused = self.throttle.paused_for
        if self.max_pause_wait is not None and paused > self.max_pause_wait:
            return fail(BackendUnavailable("the API asked to wait", retry_after=max(1, math.ceil(paused))))
        waited = self.throttle.acquire()
        submitted: Deferred[Receipt] = waited.addCallback(lambda _: self.inner.submit(build))
        return submitted.addErrback(self._server_asked_to_wait)

    def would_wait(self) -> bool:
        """True when a submit now would wait for the throttle (``IPacedBuilds``)."""
        return self.throttle.would_wait()

    def _server_asked_to_wait(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, BackendUnavailable) and error.retry_after is not None:
            self.throttle.pause(error.retry_after)
        return failure


@implementer(IBuilds)
@attrs.define
class RetryingBuilds:
    """
    An ``IBuilds`` that retries ``inner``'s transient failures
    (``BackendUnavailable``) with ``backoff``, as long as the next attempt
    would start within ``budget`` seconds of the first; permanent failures
    (``BackendRejected``) and unexpected errors are never retried.

    Retrying a create is safe because a build's name is its idempotency key:
    a create that did succeed behind a 500 or a timeout comes back as a
    duplicate (promise P3, docs/guarantees.md).
    """

    inner: IBuilds
    clock: IReactorTime
    backoff: Backoff = attrs.field(factory=Backoff)
    budget: float = NO_SPOOL_BUDGET

    log: ClassVar[Logger] = Logger()

    def submit(self, build: Build) -> Deferred[Receipt]:
        """
        Fires with ``inner``'s ``Receipt``. Fails with ``BackendRejected`` at
        once when ``inner`` does; with the last ``BackendUnavailable`` when
        the budget does not allow another attempt, its ``retry_after`` set to
        the delay the next attempt would have waited (rounded up, at least
        1 s, honouring the server's own ``Retry-After``); with whatever else
        ``inner`` raised, unchanged. Cancelling it cancels the attempt or the
        wait in progress.
        """
        return Deferred.fromCoroutine(self._submit(build))

    async def _submit(self, build: Build) -> Receipt:
        deadline = self.clock.seconds() + self.budget
        attempt = 0
        while True:
            try:
                receipt: Receipt = await maybeDeferred(self.inner.submit, build)
            except BackendUnavailable as e:
                delay = self.backoff.delay(attempt, e.retry_after)
                if self.clock.seconds() + delay > deadline:
                    retry_after = max(1, math.ceil(delay))
                    self.log.warn(
                        "Gave up on build {build} after {attempts} attempt(s): {reason}",
                        build=build.name,
                        attempts=attempt + 1,
                        reason=e.reason,
                        retry_after=retry_after,
                    )
                    raise BackendUnavailable(e.reason, retry_after=retry_after) from None
                self.log.info(
                    "Retrying build {build} in {delay:.2f}s: {reason}",
                    build=build.name,
                    delay=delay,
                    reason=e.reason,
                    attempt=attempt + 1,
                )
                await deferLater(self.clock, delay)
                attempt += 1
            else:
                return receipt


__all__ = [
    "MAX_RETRY_AFTER",
    "NO_SPOOL_BUDGET",
    "Backoff",
    "RetryingBuilds",
    "Throttle",
    "ThrottledBuilds",
]
