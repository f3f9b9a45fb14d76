"""
A process that submits builds through a ``SpooledBuilds`` and reports each
acknowledgement, for the crash-consistency tests (``test_spool_crash.py``).

    python -m tests.spool_writer SPOOL_DIR BUILDS_ROOT --count N
        [--crash STEP --at K] [--inner up|down|reject:I|poison:I] [--concurrency C]
        [--write-slots W] [--drain] [--settle]

The spool does its file I/O in the reactor's thread pool, as in production;
its inner store is the directory backend (``BUILDS_ROOT/builds/``), so what
it created survives the process. Each acknowledged build is printed as one
JSON line (``{"ack": index, "name": ..., "queued": ..., "duplicate": ...}``),
flushed before anything else happens. With ``--crash STEP --at K`` the
process exits with status 86 (``os._exit``: no cleanup, no flushing of
anything not yet on disk) the K-th time the spool reaches STEP. With
``--write-slots 1`` the spool writes one batch at a time, so that of builds
submitted together the first is written alone (a record file) and the rest
wait and go together (a batch file). With
``--inner poison:I`` submitting build I raises ``UnicodeEncodeError`` every
time; with ``--drain`` the writer waits (up to 30 s) for the spool to empty
before it stops it, so that such a record reaches its dead letter; with
``--settle`` it waits (up to 10 s) after each acknowledgement until the spool
holds nothing, so that every record's drain steps, removal included, happen
before the next build is submitted (removals are batched and finish after
the answer: without this, a crash at a removal step could come while a
later build is already being handled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore, fail, gatherResults
from twisted.internet.task import deferLater, react
from zope.interface import implementer

from brigade_cr.core.errors import BackendRejected, BackendUnavailable
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.core.values import Build, Receipt
from brigade_cr.stores.directory import directory_backend
from brigade_cr.stores.fileio import ThreadedIO
from brigade_cr.stores.retry import Backoff
from brigade_cr.stores.spool import SpooledBuilds
from tests.backend_contract import a_build

CRASH_EXIT = 86


def build_for(index: int) -> Build:
    """Build number ``index``: its own name, and a payload holding every byte value."""
    return a_build(ulid=f"01jgq8w4h1{index:016d}", payload=b'{"index": %d}' % index + bytes(range(256)))


@implementer(IBuilds)
@attrs.define
class Outage:
    """An API that is down."""

    def submit(self, build: Build) -> Deferred[Receipt]:
        return fail(BackendUnavailable("API down"))


@implementer(IBuilds)
@attrs.define
class Refusing:
    """``inner``, except that the build named ``refused`` is rejected for good."""

    inner: Any
    refused: str

    def submit(self, build: Build) -> Deferred[Receipt]:
        if build.name == self.refused:
            return fail(BackendRejected("422 Unprocessable Entity"))
        result: Deferred[Receipt] = self.inner.submit(build)
        return result


@implementer(IBuilds)
@attrs.define
class Poisoned:
    """``inner``, except that submitting the build named ``poisoned`` raises ``UnicodeEncodeError``, every time."""

    inner: Any
    poisoned: str

    def submit(self, build: Build) -> Deferred[Receipt]:
        if build.name == self.poisoned:
            "\udc80".encode()  # the field case: a lone surrogate in the API client
        result: Deferred[Receipt] = self.inner.submit(build)
        return result


def crash_at(step: str | None, occurrence: int) -> Any:
    """An ``at_step`` hook that kills the process the ``occurrence``-th time ``step`` is reached."""
    seen: Counter[str] = Counter()

    def at_step(reached: str) -> None:
        seen[reached] += 1
        if reached == step and seen[reached] == occurrence:
            os._exit(CRASH_EXIT)

    return at_step


async def run(reactor: Any, options: argparse.Namespace) -> None:
    pool = reactor.getThreadPool()
    _, directory_builds = directory_backend(reactor, pool, Path(options.builds_root), "brigade")
    inner: Any = directory_builds
    if options.inner == "down":
        inner = Outage()
    elif options.inner.startswith("reject:"):
        inner = Refusing(directory_builds, build_for(int(options.inner.split(":", 1)[1])).name)
    elif options.inner.startswith("poison:"):
        inner = Poisoned(directory_builds, build_for(int(options.inner.split(":", 1)[1])).name)
    spool = SpooledBuilds(
        Path(options.spool),
        inner,
        reactor,
        ThreadedIO(reactor, pool),
        backoff=Backoff(base=0.05, cap=0.5),
        at_step=crash_at(options.crash, options.at),
        **({} if options.write_slots is None else {"write_concurrency": options.write_slots}),
    )
    await spool.start()
    semaphore = DeferredSemaphore(options.concurrency)

    async def one(index: int) -> None:
        receipt = await spool.submit(build_for(index))
        line = {"ack": index, "name": receipt.build_name, "queued": receipt.queued, "duplicate": receipt.duplicate}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
        if options.settle:
            for _ in range(200):
                if spool.stats().queued == 0:
                    break
                await deferLater(reactor, 0.05)

    def submit(index: int) -> Deferred[None]:
        return Deferred.fromCoroutine(one(index))

    await gatherResults([semaphore.run(submit, index) for index in range(options.count)], consumeErrors=True)
    if options.drain:
        for _ in range(600):
            if spool.stats().queued == 0:
                break
            await deferLater(reactor, 0.05)
    await spool.stop(0)
    sys.stdout.write(json.dumps({"done": True}) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.spool_writer")
    parser.add_argument("spool")
    parser.add_argument("builds_root")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--crash", default=None)
    parser.add_argument("--at", type=int, default=1)
    parser.add_argument("--inner", default="up")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--write-slots", type=int, default=None)
    parser.add_argument("--drain", action="store_true")
    parser.add_argument("--settle", action="store_true")
    options = parser.parse_args(argv)
    react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main(sys.argv[1:])
