"""
Group commit: the spool's file steps batched, so that concurrent records
share one trip to the thread pool and one directory fsync (writes and
removals) or just the trip (the drain's reads).

A ``GroupCommit`` runs up to ``concurrency`` batches at a time (one by
default). An item added while a slot is free starts a batch at once (a lone
delivery waits for nobody); items added while every slot is busy wait, and
go together in the batch of the next slot to free up. Under load the
batches grow by themselves and each record's share of the fixed costs (the
thread hop, the directory fsync) shrinks; when idle nothing is delayed.

More than one slot is for steps whose time is mostly spent waiting rather
than working: a thread that comes back from a system call (an fsync, say)
must take the interpreter's lock from the reactor, which on a busy reactor
takes up to the interpreter's switch interval (5 ms) per call. Batches in
several threads wait for it side by side rather than one after another
(docs/performance.md, "The writer waited for the interpreter"). The spool
used four write slots while each record was a file of its own (several
calls per record); with a batch file per batch it uses one, so that the
batches grow instead.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Sequence, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from brigade_cr.stores.fileio import BlockingIO

I = TypeVar("I")  # noqa: E741 - the item type

# A batch's function is called as function(*before, items, *after) and
# returns, per item in order, the item's result (None for a step that only
# has to be done) or the exception that item alone failed with.
BatchFunction = Callable[..., Sequence[object]]


# The validators check the construction only: attrs would otherwise run them
# on every attribute set, and the counters below change a few times per item
# (a measurable share of a delivery's time, docs/performance.md).
@attrs.define(on_setattr=attrs.setters.NO_OP)
class GroupCommit(Generic[I]):
    """
    Items handed to ``function`` (a blocking function, run through ``io``
    as ``function(*before, items, *after)``) in batches of at most
    ``max_batch``, up to ``concurrency`` batches at a time. Batches that run
    side by side must not depend on each other's order: each item's result
    is its own. ``settled``, if given, sees each batch's results first.
    """

    io: BlockingIO
    function: BatchFunction
    before: tuple[object, ...] = ()
    after: tuple[object, ...] = ()
    max_batch: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    concurrency: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    # Called with a batch's results, in item order, before any item's
    # Deferred fires: what must be known of the whole batch before the
    # first of its callers goes on (the spool counts a batch file's
    # records). It must not raise.
    settled: Callable[[Sequence[object]], None] | None = None
    _pending: list[tuple[I, Deferred[Any]]] = attrs.field(init=False, factory=list)
    _running: int = attrs.field(init=False, default=0)  # batches running now
    _looping: bool = attrs.field(init=False, default=False)
    # Counters for the benchmark and the tests: how well batching works.
    batches: int = attrs.field(init=False, default=0)
    items: int = attrs.field(init=False, default=0)

    def add(self, item: I) -> Deferred[Any]:
        """
        Fires with ``item``'s result once its batch is done and it succeeded;
        fails with the exception ``function`` gave for it, or with the one
        the whole batch raised. Never cancelled: a step that began is
        finished.
        """
        return self.add_all((item,))[0]

    def add_all(self, items: Sequence[I]) -> list[Deferred[Any]]:
        """
        ``add`` of each of ``items``, in order, all of them waiting before a
        batch starts: they go in one batch (up to ``max_batch``) when a slot
        is free, where ``add`` one at a time would start a batch with the
        first alone.
        """
        dones: list[Deferred[Any]] = []
        for item in items:
            done: Deferred[Any] = Deferred()
            self._pending.append((item, done))
            dones.append(done)
        if self._running < self.concurrency:
            self._next()
        return dones

    def busy(self) -> bool:
        """True while a batch runs or items wait for one."""
        return self._running > 0 or bool(self._pending)

    def _next(self) -> None:
        # A loop rather than recursion: with synchronous I/O (the tests'
        # InlineIO) every batch completes inside io.run, and its callbacks
        # may add items.
        if self._looping:
            return
        self._looping = True
        try:
            while self._pending and self._running < self.concurrency:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self._running += 1
                self.batches += 1
                self.items += len(batch)
                work = self.io.run(self.function, *self.before, [item for item, _ in batch], *self.after)
                work.addCallbacks(self._finished, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
                work.addBoth(self._idle)
        finally:
            self._looping = False

    def _idle(self, _: object) -> None:
        self._running -= 1
        self._next()

    def _finished(self, results: Sequence[object], batch: list[tuple[I, Deferred[Any]]]) -> None:
        if self.settled is not None:
            self.settled(results)
        for (_, done), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                done.errback(Failure(result))
            else:
                done.callback(result)

    def _failed(self, failure: Failure, batch: list[tuple[I, Deferred[Any]]]) -> None:
        for _, done in batch:
            done.errback(failure)
