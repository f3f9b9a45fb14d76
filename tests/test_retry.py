"""
Tests for ``brigade_cr.stores.retry``: exact backoff delays, the token bucket, and
retrying within a time budget, all on a ``Clock`` with no real waiting.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from brigade_cr.core.errors import BackendRejected, BackendUnavailable
from brigade_cr.core.interfaces import IBuilds, IPacedBuilds
from brigade_cr.core.values import Build, Receipt
from brigade_cr.stores.retry import (
    MAX_RETRY_AFTER,
    NO_SPOOL_BUDGET,
    Backoff,
    RetryingBuilds,
    Throttle,
    ThrottledBuilds,
)
from tests.backend_contract import a_build
from tests.helpers import failure_of, result_of


def fixed(value: float) -> Backoff:
    """A Backoff whose random source always returns ``value``."""
    return Backoff(random=lambda: value)


# -- Backoff ---------------------------------------------------------------------------


def test_backoff_lowest_delays() -> None:
    """With random() = 0 every delay is half its ceiling: 0.25 s doubling, then 15 s from the cap."""
    backoff = fixed(0.0)
    assert [backoff.delay(attempt) for attempt in range(10)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 15.0]


def test_backoff_highest_delays() -> None:
    """At the top of the jitter range a delay is its ceiling: 0.5 s doubling, capped at 30 s."""
    backoff = fixed(1.0)
    assert [backoff.delay(attempt) for attempt in range(10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]


def test_backoff_middle_of_jitter() -> None:
    """random() = 0.5 lands three quarters of the way to each ceiling."""
    backoff = fixed(0.5)
    assert [backoff.delay(attempt) for attempt in range(8)] == [0.375, 0.75, 1.5, 3.0, 6.0, 12.0, 22.5, 22.5]


def test_backoff_after_days_of_attempts() -> None:
    """An attempt number in the hundreds of thousands does not overflow; the delay is the cap."""
    assert fixed(1.0).delay(500_000) == 30.0
    assert fixed(0.0).delay(500_000) == 15.0


def test_backoff_honours_retry_after() -> None:
    """A server's Retry-After is a floor: never sooner, whatever the jitter."""
    backoff = fixed(0.0)
    assert backoff.delay(0, 10) == 10.0
    assert backoff.delay(6, 45) == 45.0
    # The jittered delay is longer than a short Retry-After: the longer wins.
    assert backoff.delay(5, 1) == 8.0


def test_backoff_caps_retry_after() -> None:
    """An hour's Retry-After is honoured only up to 300 s."""
    assert MAX_RETRY_AFTER == 300.0
    assert fixed(0.0).delay(0, 3600) == 300.0
    assert fixed(1.0).delay(9, 10**9) == 300.0


def test_backoff_ignores_meaningless_retry_after() -> None:
    """A zero or negative Retry-After leaves the jittered delay."""
    assert fixed(0.0).delay(2, 0) == 1.0
    assert fixed(0.0).delay(2, -5) == 1.0


@given(
    attempt=st.integers(min_value=0, max_value=10_000),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    retry_after=st.none() | st.integers(min_value=-10, max_value=100_000),
)
def test_backoff_bounds(attempt: int, r: float, retry_after: int | None) -> None:
    """Any delay is at least half its ceiling and the (capped) Retry-After, and at most 30 s or that Retry-After."""
    backoff = fixed(r)
    delay = backoff.delay(attempt, retry_after)
    floor = min(max(retry_after or 0, 0), 300)
    assert delay >= backoff.ceiling(attempt) / 2
    assert delay >= floor
    assert delay <= max(30.0, floor)


# -- Throttle -------------------------------------------------------------------------


def fired_at(clock: Clock, d: Deferred[None], times: list[float]) -> None:
    d.addCallback(lambda _: times.append(clock.seconds()))


def test_throttle_burst() -> None:
    """Ten tokens are there at once; the eleventh caller waits one refill (0.2 s at 5/s)."""
    clock = Clock()
    throttle = Throttle(clock)
    for _ in range(10):
        assert result_of(throttle.acquire()) is None
    eleventh = throttle.acquire()
    assert not eleventh.called
    clock.advance(0.199)
    assert not eleventh.called
    clock.advance(0.001)
    assert result_of(eleventh) is None


def test_throttle_rate() -> None:
    """With the bucket empty, waiters are served one every 0.2 s."""
    clock = Clock()
    throttle = Throttle(clock, per_second=5.0, burst=1)
    assert result_of(throttle.acquire()) is None
    times: list[float] = []
    for _ in range(5):
        fired_at(clock, throttle.acquire(), times)
    for _ in range(5):
        clock.advance(0.2)
    assert times == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert clock.getDelayedCalls() == []


def test_throttle_refill_is_capped_at_burst() -> None:
    """A long idle spell refills the bucket to its burst and no further."""
    clock = Clock()
    throttle = Throttle(clock, per_second=5.0, burst=3)
    for _ in range(3):
        throttle.acquire()
    clock.advance(1000)
    assert [throttle.acquire().called for _ in range(4)] == [True, True, True, False]


def test_throttle_fifo() -> None:
    """Waiters are served in the order they asked, and a newcomer never overtakes them."""
    clock = Clock()
    throttle = Throttle(clock, per_second=1.0, burst=1)
    throttle.acquire()
    order: list[str] = []
    first = throttle.acquire()
    first.addCallback(lambda _: order.append("first"))
    second = throttle.acquire()
    second.addCallback(lambda _: order.append("second"))
    # Half a token has accrued: a newcomer still queues behind the others.
    clock.advance(0.5)
    third = throttle.acquire()
    third.addCallback(lambda _: order.append("third"))
    assert throttle.waiting == 3
    clock.advance(0.5)
    assert order == ["first"]
    clock.advance(1.0)
    assert order == ["first", "second"]
    clock.advance(1.0)
    assert order == ["first", "second", "third"]
    assert throttle.waiting == 0


def test_throttle_cancel_gives_up_place() -> None:
    """A cancelled wait fails with CancelledError and the next waiter gets the token in its stead."""
    clock = Clock()
    throttle = Throttle(clock, per_second=1.0, burst=1)
    throttle.acquire()
    first = throttle.acquire()
    second = throttle.acquire()
    first.cancel()
    assert isinstance(failure_of(first), CancelledError)
    assert throttle.waiting == 1
    clock.advance(1.0)
    assert result_of(second) is None


def test_throttle_cancel_all_leaves_no_timer() -> None:
    """When every waiter cancelled, no wake-up stays scheduled and the token was not spent."""
    clock = Clock()
    throttle = Throttle(clock, per_second=1.0, burst=1)
    throttle.acquire()
    waiter = throttle.acquire()
    waiter.cancel()
    failure_of(waiter)
    assert clock.getDelayedCalls() == []
    clock.advance(1.0)
    assert throttle.acquire().called


def test_throttle_waiter_may_acquire_again() -> None:
    """A waiter's callback asking for another token is served after the waiters already in line."""
    clock = Clock()
    throttle = Throttle(clock, per_second=1.0, burst=1)
    throttle.acquire()
    order: list[str] = []
    again: list[Deferred[None]] = []

    def first_done(_: None) -> None:
        order.append("first")
        d = throttle.acquire()
        d.addCallback(lambda _: order.append("first again"))
        again.append(d)

    throttle.acquire().addCallback(first_done)
    throttle.acquire().addCallback(lambda _: order.append("second"))
    clock.advance(1.0)
    clock.advance(1.0)
    clock.advance(1.0)
    assert order == ["first", "second", "first again"]


def _advance_in_steps(clock: Clock, seconds: float, step: float = 0.001) -> None:
    # Millisecond steps: a timer fires within a step of its time.
    for _ in range(round(seconds / step)):
        clock.advance(step)


def test_throttle_tick_hands_a_backlog_its_tokens_in_groups() -> None:
    """
    With tick 0.1 s at 50/s, a backlog is served five at a time, ten times a
    second (the first, alone when it asked, at its token's time): the rate
    stays 50/s, and nobody is served out of turn.
    """
    clock = Clock()
    throttle = Throttle(clock, per_second=50.0, burst=10, tick=0.1)
    for _ in range(10):
        assert result_of(throttle.acquire()) is None
    times: list[float] = []
    order: list[int] = []
    for n in range(20):
        d = throttle.acquire()
        fired_at(clock, d, times)
        d.addCallback(lambda _, n: order.append(n), n)
    _advance_in_steps(clock, 0.45)
    assert times == pytest.approx([0.02] + [0.12] * 5 + [0.22] * 5 + [0.32] * 5 + [0.42] * 4, abs=0.0011)
    assert order == list(range(20))
    assert clock.getDelayedCalls() == []


def test_throttle_tick_serves_a_lone_waiter_at_its_tokens_time() -> None:
    """One waiter is not held back to the tick: it gets its token 20 ms later at 50/s."""
    clock = Clock()
    throttle = Throttle(clock, per_second=50.0, burst=1, tick=0.1)
    assert result_of(throttle.acquire()) is None
    times: list[float] = []
    fired_at(clock, throttle.acquire(), times)
    _advance_in_steps(clock, 0.05)
    assert times == pytest.approx([0.02], abs=0.0011)


def test_throttle_tick_never_costs_rate() -> None:
    """A tick longer than the bucket takes to fill (burst 1 at 50/s: 20 ms) is cut to that: still 50/s."""
    clock = Clock()
    throttle = Throttle(clock, per_second=50.0, burst=1, tick=0.1)
    assert result_of(throttle.acquire()) is None
    times: list[float] = []
    for _ in range(10):
        fired_at(clock, throttle.acquire(), times)
    _advance_in_steps(clock, 0.25)
    assert times == pytest.approx([0.02 * n for n in range(1, 11)], abs=0.0011)


def test_throttle_would_wait_takes_nothing() -> None:
    """would_wait() says whether acquire() would wait now (empty, others waiting, paused), taking no token."""
    clock = Clock()
    throttle = Throttle(clock, per_second=5.0, burst=2)
    assert [throttle.would_wait() for _ in range(5)] == [False] * 5  # asking takes nothing
    throttle.acquire()
    assert not throttle.would_wait()
    throttle.acquire()
    assert throttle.would_wait()  # empty
    waiting = throttle.acquire()
    clock.advance(0.2)
    assert waiting.called and throttle.would_wait()  # that token went to the waiter
    clock.advance(0.2)
    assert not throttle.would_wait()
    throttle.pause(1.0)
    assert throttle.would_wait()  # paused, with a token in the bucket
    clock.advance(1.0)
    assert not throttle.would_wait()
    late = [throttle.acquire() for _ in range(3)]
    assert [d.called for d in late] == [True, True, False]
    assert throttle.would_wait()  # someone waits


def test_throttled_builds_are_paced_builds() -> None:
    """ThrottledBuilds provides IPacedBuilds: would_wait() is its throttle's."""
    clock = Clock()
    builds = ThrottledBuilds(ScriptedBuilds(clock, []), Throttle(clock, per_second=1.0, burst=1))
    assert verifyObject(IPacedBuilds, builds)
    assert not builds.would_wait()
    builds.throttle.acquire()
    assert builds.would_wait()


def test_throttle_refuses_nonsense() -> None:
    """A rate of zero or a burst below one cannot work and is refused."""
    with pytest.raises(ValueError):
        Throttle(Clock(), per_second=0.0)
    with pytest.raises(ValueError):
        Throttle(Clock(), burst=0)
    with pytest.raises(ValueError):
        Throttle(Clock(), tick=-0.1)


# -- a scripted inner store ----------------------------------------------------------------


@implementer(IBuilds)
@attrs.define
class ScriptedBuilds:
    """An IBuilds answering each submit with the next outcome of ``script``, noting the time of each call."""

    clock: Clock
    script: list[Receipt | Exception | Deferred[Receipt]]
    calls: list[float] = attrs.field(factory=list)

    def submit(self, build: Build) -> Deferred[Receipt]:
        self.calls.append(self.clock.seconds())
        outcome = self.script.pop(0)
        if isinstance(outcome, Deferred):
            return outcome
        if isinstance(outcome, Exception):
            return fail(outcome)
        return succeed(outcome)


def unavailable(retry_after: int | None = None) -> BackendUnavailable:
    return BackendUnavailable("API down", retry_after)


NAME = a_build().name


# -- RetryingBuilds ----------------------------------------------------------------------


def test_retrying_provides_ibuilds() -> None:
    """RetryingBuilds and ThrottledBuilds are IBuilds."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [])
    assert verifyObject(IBuilds, RetryingBuilds(inner, clock))
    assert verifyObject(IBuilds, ThrottledBuilds(inner, Throttle(clock)))


def test_retrying_transient_then_success() -> None:
    """Two transient failures, then success: three attempts at 0, 0.25 and 0.75 s, and inner's receipt."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(), unavailable(), Receipt(NAME)])
    d = RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build())
    clock.advance(0.25)
    assert not d.called
    clock.advance(0.5)
    assert result_of(d) == Receipt(NAME)
    assert inner.calls == [0.0, 0.25, 0.75]


def test_retrying_duplicate_passes_through() -> None:
    """A duplicate after a 5xx (the create had gone through) is the receipt, duplicate=True."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(), Receipt(NAME, duplicate=True)])
    d = RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build())
    clock.advance(0.25)
    assert result_of(d) == Receipt(NAME, duplicate=True)


def test_retrying_never_retries_rejection() -> None:
    """BackendRejected fails at once, after exactly one attempt."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [BackendRejected("422 Invalid")])
    error = failure_of(RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build()))
    assert isinstance(error, BackendRejected)
    assert error.reason == "422 Invalid"
    assert inner.calls == [0.0]
    assert clock.getDelayedCalls() == []


def test_retrying_rejection_after_transient() -> None:
    """A rejection after a transient failure ends the retries: two attempts."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(), BackendRejected("400")])
    d = RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build())
    clock.advance(0.25)
    assert isinstance(failure_of(d), BackendRejected)
    assert inner.calls == [0.0, 0.25]


def test_retrying_budget_exhausted() -> None:
    """
    Always down: attempts at 0, 0.25, 0.75, 1.75 and 3.75 s fit the 4 s
    budget; the next would wait 4 s more, so the last failure is raised with
    retry_after 4.
    """
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable() for _ in range(10)])
    d = RetryingBuilds(inner, clock, fixed(0.0), budget=4.0).submit(a_build())
    for _ in range(40):
        clock.advance(0.25)
    error = failure_of(d)
    assert isinstance(error, BackendUnavailable)
    assert error.reason == "API down"
    assert error.retry_after == 4
    assert inner.calls == [0.0, 0.25, 0.75, 1.75, 3.75]


def test_retrying_server_retry_after_beyond_budget() -> None:
    """A Retry-After longer than the budget ends it at once, passing the server's wait on."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(retry_after=10), Receipt(NAME)])
    error = failure_of(RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build()))
    assert isinstance(error, BackendUnavailable)
    assert error.retry_after == 10
    assert inner.calls == [0.0]


def test_retrying_server_retry_after_within_budget() -> None:
    """A Retry-After of 2 s is waited out exactly, not the 0.25 s backoff."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(retry_after=2), Receipt(NAME)])
    d = RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build())
    clock.advance(1.99)
    assert not d.called
    clock.advance(0.01)
    assert result_of(d) == Receipt(NAME)
    assert inner.calls == [0.0, 2.0]


def test_retrying_minimum_retry_after() -> None:
    """With no budget at all, the failure is raised with retry_after of at least 1 s."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable()])
    error = failure_of(RetryingBuilds(inner, clock, fixed(0.0), budget=0.0).submit(a_build()))
    assert isinstance(error, BackendUnavailable)
    assert error.retry_after == 1


def test_retrying_unexpected_error_not_retried() -> None:
    """An exception that is not a domain error is not retried: it is a bug to report."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [ValueError("bug")])
    assert isinstance(failure_of(RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build())), ValueError)
    assert inner.calls == [0.0]


def test_retrying_cancel_during_wait() -> None:
    """Cancelling while waiting to retry stops: CancelledError, no further attempt, no timer left."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(), Receipt(NAME)])
    d = RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build())
    d.cancel()
    assert isinstance(failure_of(d), CancelledError)
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert inner.calls == [0.0]


def test_retrying_cancel_during_attempt() -> None:
    """Cancelling during an attempt cancels that attempt's Deferred."""
    clock = Clock()
    cancelled: list[Any] = []
    attempt: Deferred[Receipt] = Deferred(cancelled.append)
    inner = ScriptedBuilds(clock, [attempt])
    d = RetryingBuilds(inner, clock, fixed(0.0)).submit(a_build())
    d.cancel()
    assert cancelled == [attempt]
    assert isinstance(failure_of(d), CancelledError)


# -- ThrottledBuilds ---------------------------------------------------------------------


def test_throttled_builds_waits_for_token() -> None:
    """Past the burst, a submit reaches inner only when a token is free."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [Receipt(NAME)] * 3)
    builds = ThrottledBuilds(inner, Throttle(clock, per_second=2.0, burst=2))
    results = [builds.submit(a_build()) for _ in range(3)]
    assert [d.called for d in results] == [True, True, False]
    clock.advance(0.5)
    assert result_of(results[2]) == Receipt(NAME)
    assert inner.calls == [0.0, 0.0, 0.5]


def test_throttled_builds_cancel_before_token() -> None:
    """A submit cancelled while waiting for its token never reaches inner."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [Receipt(NAME)])
    builds = ThrottledBuilds(inner, Throttle(clock, per_second=1.0, burst=1))
    builds.submit(a_build())
    waiting = builds.submit(a_build())
    waiting.cancel()
    assert isinstance(failure_of(waiting), CancelledError)
    clock.advance(5)
    assert inner.calls == [0.0]


# -- Throttle.pause and Retry-After for every caller ------------------------------------


def test_throttle_pause_holds_every_caller() -> None:
    """A 3 s pause holds callers with tokens to spare; at its end they are served, in order, at once."""
    clock = Clock()
    throttle = Throttle(clock, per_second=5.0, burst=10)
    throttle.pause(3)
    assert throttle.paused_for == 3.0
    times: list[float] = []
    for _ in range(3):
        fired_at(clock, throttle.acquire(), times)
    clock.advance(2.999)
    assert times == []
    clock.advance(0.001)
    assert times == [3.0, 3.0, 3.0]
    assert throttle.paused_for == 0.0
    assert clock.getDelayedCalls() == []


def test_throttle_pause_keeps_the_longer_pause_and_caps_it() -> None:
    """A shorter pause does not cut a longer one; a pause is at most MAX_RETRY_AFTER."""
    clock = Clock()
    throttle = Throttle(clock)
    throttle.pause(10)
    throttle.pause(2)
    assert throttle.paused_for == 10.0
    throttle.pause(MAX_RETRY_AFTER * 10)
    assert throttle.paused_for == MAX_RETRY_AFTER


def test_throttle_pause_with_waiters_already_in_line() -> None:
    """A pause while a caller waits for a refill moves its turn to the end of the pause."""
    clock = Clock()
    throttle = Throttle(clock, per_second=1.0, burst=1)
    assert result_of(throttle.acquire()) is None
    times: list[float] = []
    fired_at(clock, throttle.acquire(), times)
    clock.advance(0.5)
    throttle.pause(4)
    clock.advance(3.999)
    assert times == []
    clock.advance(0.001)
    assert times == pytest.approx([4.5])
    assert clock.getDelayedCalls() == []


def test_throttled_builds_retry_after_pauses_every_caller() -> None:
    """A 429 with Retry-After: 7 to one submit makes the others wait 7 s for their token."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(7), Receipt(NAME), Receipt(NAME)])
    builds = ThrottledBuilds(inner, Throttle(clock, per_second=50.0, burst=500))
    first = builds.submit(a_build())
    assert isinstance(failure_of(first), BackendUnavailable)
    second = builds.submit(a_build())
    third = builds.submit(a_build())
    assert not second.called and not third.called
    clock.advance(6.999)
    assert inner.calls == [0.0]
    clock.advance(0.001)
    assert result_of(second) == Receipt(NAME)
    assert result_of(third) == Receipt(NAME)
    assert inner.calls == [0.0, 7.0, 7.0]


def test_throttled_builds_no_pause_without_retry_after() -> None:
    """A failure without Retry-After (API down) leaves the throttle alone: backoff is the caller's."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(), Receipt(NAME)])
    throttle = Throttle(clock, per_second=50.0, burst=500)
    builds = ThrottledBuilds(inner, throttle)
    assert isinstance(failure_of(builds.submit(a_build())), BackendUnavailable)
    assert throttle.paused_for == 0.0
    assert result_of(builds.submit(a_build())) == Receipt(NAME)


def test_retrying_over_throttled_honours_retry_after_for_all() -> None:
    """RetryingBuilds over ThrottledBuilds: a 429 (Retry-After: 2) to one delivery delays a concurrent one too."""
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(2), Receipt(NAME), Receipt(NAME)])
    throttled = ThrottledBuilds(inner, Throttle(clock, per_second=50.0, burst=500))
    builds = RetryingBuilds(throttled, clock, backoff=fixed(0.0))
    first = builds.submit(a_build())
    second = builds.submit(a_build())
    assert not first.called and not second.called
    clock.advance(2)
    assert result_of(first) == Receipt(NAME)
    assert result_of(second) == Receipt(NAME)
    assert inner.calls == [0.0, 2.0, 2.0]


def test_no_spool_pause_longer_than_budget_answers_at_once() -> None:
    """
    Without a spool (max_pause_wait 4 s): after a 429 with Retry-After: 7 the
    next delivery fails at once with retry_after 7, never reaching inner; a
    pause within the budget is waited out.
    """
    clock = Clock()
    inner = ScriptedBuilds(clock, [unavailable(7), unavailable(3), Receipt(NAME)])
    throttled = ThrottledBuilds(inner, Throttle(clock, per_second=50.0, burst=500), max_pause_wait=NO_SPOOL_BUDGET)
    assert isinstance(failure_of(throttled.submit(a_build())), BackendUnavailable)
    error = failure_of(RetryingBuilds(throttled, clock, backoff=fixed(0.0)).submit(a_build()))
    assert isinstance(error, BackendUnavailable)
    assert error.retry_after == 7
    assert inner.calls == [0.0]
    clock.advance(7)
    assert isinstance(failure_of(throttled.submit(a_build())), BackendUnavailable)
    waited = throttled.submit(a_build())
    assert not waited.called
    clock.advance(3)
    assert result_of(waited) == Receipt(NAME)
    assert inner.calls == [0.0, 7.0, 10.0]
